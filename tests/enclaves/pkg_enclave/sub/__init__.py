"""A subpackage of the package enclave."""
