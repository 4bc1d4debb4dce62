"""Training: the TI loop, A1111 and kohya semantics, the LR schedule grammar, the plan."""
