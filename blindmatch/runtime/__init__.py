"""What node and coordinator share at run time: PKI files, mTLS channels and servers, protobuf
conversions (``serde``), gRPC statuses (``status``), hardening and metrics."""
