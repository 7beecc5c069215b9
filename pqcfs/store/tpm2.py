"""A TPM 2.0, through tpm2-tools (Debian's `tpm2-tools`): seal a slot's secret in the TPM as
a persistent object, unseal it, remove it.

Why tpm2-tools and not a Python binding: the binding (tpm2-pytss) is a compiled extension
that needs the TSS headers to build into pqcfs' environment (Debian's python3-tpm2-pytss
serves only the system interpreter), while tpm2-tools is the TSS project's own command
line, packaged everywhere, with a stable interface and TCTI selection (`device:`,
`swtpm:`, `tabrmd:`) that users of systemd-cryptenroll and clevis already know. Each call
runs one tool; whatever a call loads into the TPM (the primary key, a policy session) is
flushed before it returns, so a TPM without a resource manager (swtpm, /dev/tpm0) keeps
its few transient slots free.

The sealed object is persistent (a handle in PERSISTENT_BASE..+255): `keys remove` evicts
it, after which no copy of the header, however old, opens the slot — its secret is gone
from the only place that held it. The object's name is kept in the slot and checked before
use, so another object at that handle (another vault's, a reinstalled TPM's) is refused.
Its auth value comes from the PIN (through Argon2id, in slots.py); the object is not
`noDA`, so wrong PINs count against the TPM's dictionary-attack lockout.
"""

from __future__ import annotations

import hmac
import os
import re
import shutil
import subprocess
import tempfile

from pqcfs.errors import PqcfsError, SetupError, WrongKey

PERSISTENT_BASE = 0x81706300      # "pc" in the owner's persistent range; 256 slots of ours
PERSISTENT_COUNT = 256
PCR_BANK = "sha256"
MAX_PCR = 23
TIMEOUT = 60


class TpmError(WrongKey):
    """The TPM refused to unseal (wrong PIN, lockout, PCRs changed, not this machine's)."""

    def __init__(self, message: str, detail: str = "", kind: str = "other"):
        super().__init__(message)
        self.detail = detail.lower()     # the tools' whole error output, to tell the cases apart
        self.kind = kind                 # absent, pcr, pin, lockout, other

    @property
    def another_slot_may_open(self) -> bool:
        """Not this slot's TPM, or its PCRs moved: another TPM slot may still open. (A wrong
        PIN is not tried on another slot: each try counts against the TPM's lockout.)"""
        return self.kind in ("absent", "pcr")


def default_tcti() -> str:
    if os.environ.get("TPM2TOOLS_TCTI"):
        return os.environ["TPM2TOOLS_TCTI"]
    return "device:/dev/tpmrm0" if os.path.exists("/dev/tpmrm0") else "device:/dev/tpm0"


def present(tcti: str | None = None) -> bool:
    """A TPM answers at tcti (for `automount enable` to suggest the TPM slot)."""
    if shutil.which("tpm2_getcap") is None:
        return False
    try:
        Tpm(tcti)._run("tpm2_getcap", "properties-fixed")
        return True
    except PqcfsError:
        return False


def check_pcrs(pcrs) -> list[int]:
    if (not isinstance(pcrs, list) or len(pcrs) > MAX_PCR + 1 or len(set(pcrs)) != len(pcrs)
            or not all(type(n) is int and 0 <= n <= MAX_PCR for n in pcrs)):
        raise PqcfsError(f"PCRs must be distinct numbers 0-{MAX_PCR}")
    return sorted(pcrs)


def parse_pcrs(text: str) -> list[int]:
    """--pcrs 0,7 (or "7+11", "none")."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return check_pcrs([int(x) for x in re.split(r"[,+ ]+", text.strip()) if x])
    except ValueError:
        raise PqcfsError(f"--pcrs {text!r}: give PCR numbers 0-{MAX_PCR}, e.g. 0,7") from None


class Tpm:
    def __init__(self, tcti: str | None = None):
        self.tcti = tcti or default_tcti()
        # Without a resource manager every tool that reads a context file loads it again,
        # and it stays loaded when the tool exits: after each tool, transient objects are
        # flushed (their saved contexts stay usable), or three calls fill swtpm's slots.
        self.flush_objects = not self.tcti.startswith(("device:/dev/tpmrm", "tabrmd"))

    def _run(self, tool: str, *args: str, data: bytes | None = None) -> bytes:
        try:
            return self._tool(tool, *args, data=data)
        finally:
            if self.flush_objects and tool != "tpm2_flushcontext":
                try:
                    self._tool("tpm2_flushcontext", "-t")
                except PqcfsError:
                    pass

    def _tool(self, tool: str, *args: str, data: bytes | None = None) -> bytes:
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} is missing: install tpm2-tools (Debian: apt-get install tpm2-tools)")
        try:
            proc = subprocess.run([tool, *args], input=data, capture_output=True, timeout=TIMEOUT,
                                  env={**os.environ, "TPM2TOOLS_TCTI": self.tcti},
                                  stdin=None if data is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SetupError(f"the TPM at {self.tcti} did not answer in {TIMEOUT} s") from None
        if proc.returncode != 0:
            raise _error(proc.stderr.decode(errors="replace"), self.tcti)
        return proc.stdout

    # --- sealing ---

    def seal(self, secret: bytes, auth: bytes | None, pcrs: list[int]) -> dict:
        """Seal secret as a new persistent object; returns the slot's TPM fields."""
        pcrs = check_pcrs(pcrs)
        with tempfile.TemporaryDirectory(prefix="pqcfs-tpm2-") as work:
            f = lambda name: os.path.join(work, name)     # noqa: E731
            self._primary(f("primary.ctx"))
            try:
                policy = self._policy(work, pcrs, auth is not None, trial=True) if pcrs else None
                args = ["-C", f("primary.ctx"), "-g", "sha256", "-u", f("obj.pub"), "-r", f("obj.priv"), "-i", "-"]
                attributes = "fixedtpm|fixedparent"
                if policy:
                    args += ["-L", policy]
                else:
                    attributes += "|userwithauth"
                if auth is not None:
                    args += ["-p", "hex:" + auth.hex()]
                self._run("tpm2_create", *args, "-a", attributes, data=secret)
                self._run("tpm2_load", "-C", f("primary.ctx"), "-u", f("obj.pub"), "-r", f("obj.priv"),
                          "-c", f("obj.ctx"))
            finally:
                self._flush(f("primary.ctx"))
            try:
                handle = self._free_handle()
                self._run("tpm2_evictcontrol", "-C", "o", "-c", f("obj.ctx"), hex(handle))
            finally:
                self._flush(f("obj.ctx"))
        return {"handle": handle, "name": self.name(handle), "pcrs": pcrs, "pcr_bank": PCR_BANK,
                "pcr_values": self.pcr_values(pcrs)}

    def _primary(self, ctx: str) -> None:
        # The same template gives the same key from the owner seed: nothing persistent needed.
        self._run("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-c", ctx)

    def _policy(self, work: str, pcrs: list[int], with_auth: bool, trial: bool) -> str | None:
        """A policy session (trial: only its digest, for sealing) of PolicyPCR over pcrs and,
        with a PIN, PolicyPassword; returns the policy digest file (trial) or the session."""
        session = os.path.join(work, "session.ctx")
        policy = os.path.join(work, "policy.dat")
        self._run("tpm2_startauthsession", "-S", session, *([] if trial else ["--policy-session"]))
        try:
            self._run("tpm2_policypcr", "-S", session, "-l", f"{PCR_BANK}:{','.join(map(str, pcrs))}", "-L", policy)
            if with_auth:
                self._run("tpm2_policypassword", "-S", session, "-L", policy)
        except BaseException:
            self._flush(session)
            raise
        if trial:
            self._flush(session)
            return policy
        return session

    def _free_handle(self) -> int:
        taken = {int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]+", self._run("tpm2_getcap", "handles-persistent")
                                                 .decode())}
        for handle in range(PERSISTENT_BASE, PERSISTENT_BASE + PERSISTENT_COUNT):
            if handle not in taken:
                return handle
        raise PqcfsError("the TPM holds 256 pqcfs slots already; remove one (`pqcfs keys remove`)")

    def _flush(self, ctx: str) -> None:
        if os.path.exists(ctx):
            try:
                self._run("tpm2_flushcontext", ctx)
            except PqcfsError:
                pass

    # --- reading ---

    def name(self, handle: int) -> str | None:
        """The name (hex) of the persistent object at handle, None when there is none."""
        with tempfile.TemporaryDirectory(prefix="pqcfs-tpm2-") as work:
            try:
                self._run("tpm2_readpublic", "-c", hex(handle), "-n", os.path.join(work, "name"))
            except TpmError:
                return None
            with open(os.path.join(work, "name"), "rb") as f:
                return f.read(256).hex()

    def pcr_values(self, pcrs: list[int]) -> dict[str, str]:
        if not pcrs:
            return {}
        out = self._run("tpm2_pcrread", f"{PCR_BANK}:{','.join(map(str, pcrs))}").decode()
        values = {m.group(1): m.group(2).lower() for m in re.finditer(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)", out, re.M)}
        return {str(n): values.get(str(n), "") for n in pcrs}

    def lockout(self) -> tuple[int, int]:
        """(failed tries counted now, tries before lockout)."""
        out = self._run("tpm2_getcap", "properties-variable").decode()
        counter = re.search(r"TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+)", out)
        most = re.search(r"TPM2_PT_MAX_AUTH_FAIL:\s*(0x[0-9a-fA-F]+)", out)
        return (int(counter.group(1), 16) if counter else 0, int(most.group(1), 16) if most else 0)

    # --- unsealing, removing ---

    def unseal(self, fields: dict, auth: bytes | None) -> bytes:
        handle, pcrs = _handle(fields), check_pcrs(fields.get("pcrs", []))
        name = self.name(handle)
        if name is None or not hmac.compare_digest(name, str(fields.get("name", ""))):
            raise TpmError("this TPM does not hold the slot's sealed key (the slot was sealed on another machine, "
                           "its key was removed with `pqcfs keys remove`, or the TPM was cleared)", kind="absent")
        with tempfile.TemporaryDirectory(prefix="pqcfs-tpm2-") as work:
            session = self._policy(work, pcrs, auth is not None, trial=False) if pcrs else None
            password = ("session:" + session + ("+hex:" + auth.hex() if auth is not None else "")) if session else \
                ("hex:" + auth.hex() if auth is not None else None)
            try:
                return self._run("tpm2_unseal", "-c", hex(handle), *(["-p", password] if password else []))
            except TpmError as e:
                raise self._why(e, fields, pcrs, auth) from None
            finally:
                if session:
                    self._flush(session)

    def _why(self, error: "TpmError", fields: dict, pcrs: list[int], auth: bytes | None) -> Exception:
        text = error.detail
        if "0x921" in text or "lockout" in text:
            return TpmError("the TPM is in dictionary-attack lockout (too many wrong PINs); it lets tries again "
                            "after its recovery time, or after `tpm2_dictionarylockout --clear-lockout` by its owner",
                            kind="lockout")
        if pcrs and ("0x99d" in text or "policy check failed" in text):
            now = self.pcr_values(pcrs)
            changed = [n for n in map(str, pcrs) if now.get(n) != fields.get("pcr_values", {}).get(n)]
            if changed:
                return TpmError(f"the TPM refused: PCR {', '.join(changed)} changed since the slot was sealed "
                                "(a firmware, boot loader or Secure Boot change); unlock another way and add the "
                                "slot again", kind="pcr")
        if auth is not None and ("0x98e" in text or "0x9a2" in text or "authorization hmac check failed" in text):
            counted, most = self.lockout()
            left = max(0, most - counted)
            return TpmError(f"wrong PIN ({left} tr{'y' if left == 1 else 'ies'} left before the TPM locks out)",
                            kind="pin")
        return error

    def evict(self, fields: dict) -> bool:
        """Remove the slot's sealed object (True), if this TPM holds it (the same name)."""
        handle = _handle(fields)
        name = self.name(handle)
        if name is None or not hmac.compare_digest(name, str(fields.get("name", ""))):
            return False
        self._run("tpm2_evictcontrol", "-C", "o", "-c", hex(handle))
        return True


def _handle(fields: dict) -> int:
    handle = fields.get("handle")
    if type(handle) is not int or not PERSISTENT_BASE <= handle < PERSISTENT_BASE + PERSISTENT_COUNT:
        raise TpmError("the TPM slot names a handle outside pqcfs' range: not a slot pqcfs wrote")
    return handle


def _error(stderr: str, tcti: str) -> PqcfsError:
    low = stderr.lower()
    if ("tcti" in low or "connection refused" in low or "no such file" in low or "failed to open" in low) \
            and "esys_" not in low.replace("esys_tr", ""):
        return SetupError(f"no TPM answers at {tcti} ({_last(stderr)}); give --tcti, or check /dev/tpmrm0")
    return TpmError(f"the TPM refused: {_last(stderr)}", stderr)


def _last(stderr: str) -> str:
    """The line that says what the TPM answered ("Esys_Unseal(0x98E) - tpm:session(1):...")."""
    lines = [line.strip().removeprefix("ERROR: ") for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if "tpm:" in line or "tcti" in line.lower()] or \
        [line for line in lines if not line.startswith("Unable to run")] or lines
    return (said[-1] if said else "no message")[:300]
