"""The operators: each verb with its own plan over the shared pipeline (`netgraft.core`). Verbs never import each
other."""
