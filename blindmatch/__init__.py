"""blindmatch: find the threat indicators national CERTs share, without showing each other their data.

The matching core lives here (``canon``, ``group``, ``protocol``, ``match``): pure, no I/O.
``pki`` and ``net`` hold the federation PKI and the mTLS transport that node and coordinator share;
``v1`` is generated gRPC code; ``cli`` is the command-line front door.
"""

__version__ = "0.1.0"
