"""blindmatch: find the threat indicators national CERTs share, without showing each other their data.

The package is built in floors; a floor imports only the floors below it, and none imports ``node``
or ``coordinator`` (``tests/test_layers.py`` keeps these rules):

``core/``     the protocol, pure: no grpc, no files, no clock (all passed in)
              canon, spec, signing, identity, orders, errors, states, match, round_node
              the round: secp256k1, proofs, oprf, evaluation, member, owner, merkle,
              delivery, committee; watch epochs: epoch, checker, watch_sealed, watch_rules
``runtime/``  what both servers share at run time: pki, net (mTLS, roles), serde and serde_v2
              (protobuf <-> core: proto/blindmatch/v1's messages, then v2's), status (errors ->
              gRPC statuses), hardening, memory, metrics_endpoint
``cli/``      the ``blindmatch`` command: main (argparse, dispatching lazily to node and
              coordinator), errors (exit codes), tomlconfig, initdir
``demo/``     the demo, driven through the CLI: demo, harness, samples, sample_files
``v1/``, ``v2/``  generated protobuf and gRPC code, never edited
"""

__version__ = "0.1.0"
