"""Common code of the LoRA-XS federation: the adapter math, models, data, training and files."""
