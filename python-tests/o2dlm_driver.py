"""Child process for tests: runs `Api` calls sent by o2dlm_remote.Remote.

Protocol on stdin/stdout: pickled (method, args, kwargs) requests, pickled
("ok", result) or ("error", text) replies. Both ends are our own test code.
"""

import os
import pickle
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from o2dlm_ctypes import Api  # noqa: E402


def main():
    api = Api(sys.argv[1])
    requests = sys.stdin.buffer
    replies = sys.stdout.buffer
    while True:
        try:
            method, args, kwargs = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = ("ok", getattr(api, method)(*args, **kwargs))
        except Exception:  # reported to the test, which fails
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, replies)
        replies.flush()


if __name__ == "__main__":
    main()
