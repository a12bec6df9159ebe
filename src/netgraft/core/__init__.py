"""The pipeline every operator shares: trace -> couple -> plan -> apply -> certify.

`core` imports no operator and no family: operators (`netgraft.ops`) and front ends (`netgraft.hf`) are built on it.
"""
