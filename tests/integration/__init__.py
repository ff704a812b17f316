"""Integration tests: the real ``twistd -n gateway`` between real clients and origins.

Everything runs on 127.0.0.1 with ports chosen by the kernel; see ``support``.
"""
