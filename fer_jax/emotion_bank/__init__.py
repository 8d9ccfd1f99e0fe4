"""The emotion bank of Di Luzio, Rosato & Panella (arXiv 2407.14865; PAPERS.md section 4): one binary
(emotion vs rest) landmark CNN + LSTM per emotion, combined, explained and pruned.

``bank`` (train the K models of a variant through the shared trainer, resumable; ``fer-jax emotion-bank``),
``members`` (a trained model as functions of landmark clips), ``calibration`` (Platt scaling, argmax
combination, multi-class metrics), ``report`` (per-emotion and multi-class tables, confusion matrix, the
variants side by side), ``explain`` (Integrated Gradients per landmark and emotion, heat maps),
``pruning`` (progressive landmark pruning with retraining), ``robustness`` (the bank on landmarks with
test-time noise) and ``compute`` (multiply-accumulates, latency, train-step time).
"""
