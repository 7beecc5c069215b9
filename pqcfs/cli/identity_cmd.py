"""pqcfs identity new|show|export"""

from __future__ import annotations

import os

from pqcfs.cli import options, secrets
from pqcfs.crypto import kem
from pqcfs.crypto.kdf import calibrate
from pqcfs.errors import PqcfsError
from pqcfs.format import identity as identity_fmt
from pqcfs.store.atomic import write_atomic


def add_parser(sub) -> None:
    p = sub.add_parser("identity", help="create and show your identity (hybrid KEM + ML-DSA key pair)")
    isub = p.add_subparsers(dest="identity_cmd", required=True, metavar="new|show|export",
                            help="what to do with your identity")
    new = isub.add_parser("new", help="create a passphrase-protected identity")
    new.add_argument("--file", default=None, help="where to store it (default: %s)" % options.default_identity_path())
    new.add_argument("--suite", default=kem.DEFAULT_SUITE, choices=sorted(kem.SUITES),
                     help="the hybrid KEM of the identity key (default: %(default)s)")
    new.add_argument("--force", action="store_true", help="overwrite an existing identity")
    options.add_secret_options(new)
    for name, helptext in (("show", "show the public key and fingerprint"),
                           ("export", "write the public key to a file (or stdout) to hand to others")):
        q = isub.add_parser(name, help=helptext)
        q.add_argument("--file", default=None, help="the identity file")
        q.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
        if name == "export":
            q.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    path = args.file or options.default_identity_path()
    if args.identity_cmd == "new":
        if os.path.exists(path) and not args.force:
            raise PqcfsError(f"an identity already exists at {path} (--force replaces it)")
        pw = secrets.passphrase(args.passfile, args.extpass, "New identity passphrase", confirm=True)
        ident = identity_fmt.Identity.generate(args.suite)
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        write_atomic(path, identity_fmt.encode_file(ident, pw, calibrate()))
        os.chmod(path, 0o600)
        options.emit(args, {}, f"identity {ident.public.fingerprint} ({ident.public.suite}) written to {path}")
        return 0
    try:
        with open(path, "rb") as f:
            public = identity_fmt.read_public(f.read())
    except FileNotFoundError:
        raise PqcfsError(f"no identity at {path} (create one with `pqcfs identity new`)") from None
    doc = {"fingerprint": public.fingerprint, "suite": public.suite, "public_key": public.encode()}
    if args.identity_cmd == "export" and args.output:
        write_atomic(args.output, (public.encode() + "\n").encode())
        options.emit(args, doc, f"public key {public.fingerprint} written to {args.output}")
    elif args.identity_cmd == "export":
        print(public.encode())
    else:
        options.emit(args, doc, f"fingerprint: {public.fingerprint}\nsuite:       {public.suite}\n"
                                f"public key:  {public.encode()[:72]}... ({len(public.encode())} chars)")
    return 0
