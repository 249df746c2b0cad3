"""The quickstart driver, in the long-form Asylo-style API (the seed's ``main``).

python -m farside.examples.quickstart.demo_driver --message "Asylo Rocks"
"""

from __future__ import annotations

import argparse
import sys

import farside
from farside.examples.quickstart import DEMO_ENCLAVE

DEFAULT_ENCLAVE = DEMO_ENCLAVE  # the name this module has always had


def run(
    enclave_path: str,
    message: str,
    *,
    provision: farside.Provisioner | None = None,
    policy: farside.AttestationPolicy | None = None,
    decrypt: bool = False,
    load_timeout: float = 30.0,
) -> str:
    """Load the demo enclave, encrypt ``message`` inside it, destroy it; return the ciphertext."""
    kEnclaveName = "demo_enclave"  # noqa: N806 (the seed's name)

    # Part 1: Initialization
    manager = farside.EnclaveManager.instance()
    proxy_config = farside.RemoteProxyClientConfig(
        provision=provision or farside.LocalProvision(), policy=policy, load_timeout=load_timeout
    )
    load_config = farside.EnclaveLoadConfig(
        name=kEnclaveName,
        config=farside.EnclaveConfig(),
        remote_load_config=farside.RemoteLoadConfig(
            proxy_config=proxy_config,
            sim_load_config=farside.SimLoadConfig(enclave_path=enclave_path, debug=True),
        ),
    )
    manager.load_enclave(load_config)

    # Part 2: Secure execution
    client = manager.get_client(kEnclaveName)
    try:
        sealed: str = client.enter_and_run({"message": message})
        if decrypt:
            print(f"Decrypted inside the enclave: {client.call('decrypt', sealed)}")
    finally:
        # Part 3: Finalization
        manager.destroy_enclave(client, final_input=None, skip_finalize=False)
    return sealed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Encrypt a message inside a farside enclave.")
    parser.add_argument(
        "--enclave-path",
        "--enclave_path",
        dest="enclave_path",
        default=str(DEFAULT_ENCLAVE),
        help="the enclave bundle to load (default: the demo enclave)",
    )
    parser.add_argument("--message", required=True, help="the message to encrypt")
    args = parser.parse_args(argv)
    if not args.message:
        parser.error("empty --message")
    try:
        run(args.enclave_path, args.message)
    except farside.EnclaveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
