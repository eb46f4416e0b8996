"""Packaging a run for the challenge: the single-file `train_gpt.py` (`export`, its modules in
`bundle`, its entry point `entry`), the records folder (`submit`) and size accounting (`size`)."""
