"""A backend signing a ringcast connection token with PyJWT (HS256).

    python3 make_token.py SECRET USER  ->  prints the token
"""
import sys
import time

import jwt

secret, user = sys.argv[1], sys.argv[2]
token = jwt.encode(
    {"sub": user, "exp": int(time.time()) + 3600, "info": {"name": "From Python"}},
    secret,
    algorithm="HS256",
)
print(token)
