"""The seed's remote-backend quickstart: an enclave that encrypts a message."""
