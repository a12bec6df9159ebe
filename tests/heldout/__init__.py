"""Held-out style sweep (issue 13): third-party-style architectures written from their papers.

The models in `models_vision.py` and `models_sequence.py` are written the way an outside repository would write them
(plain PyTorch idioms, nothing tailored to netgraft). The tests grow them with `widen` / `deepen`, transfer them with
`inject`, and check the results themselves on fresh inputs in train and eval mode (never trusting netgraft's own
certificate).
"""
