"""The methods beside plain transfer: few-shot (prototypes, SetFit) and its N-way K-shot evaluation, continual
learning, domain adaptation, multi-task heads, self-supervised pre-training, scikit-learn models on frozen
features, and the transfer-vs-scratch comparison. Each module is imported by name; this file imports nothing."""
