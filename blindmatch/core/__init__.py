"""The protocol: pure. No grpc, no files, no clock and no OS; whatever it needs of them is passed in."""
