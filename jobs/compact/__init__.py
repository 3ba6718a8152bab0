"""`grec encode-users`, `grec distill` and `grec quantize`: make a registered model cheaper to serve,
its user side stored per user (encode_users.py), a distilled student (distill.py), a version at
lower precision (quantize.py)."""
