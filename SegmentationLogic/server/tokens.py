"""Access tokens of the segmentation server: where they come from, how they are compared.

A token is a secret, like the licence key: never printed, logged or put in an error
message (`mask_token` gives a display form). It comes from a file readable by its owner
only (as ssh insists for private keys) or from the environment variable
TOTALSEG_SERVER_TOKEN; a client with neither uses `default_token_file()` when it exists
(`store_token` writes it, e.g. from the Slicer module's masked field).

A server token file may hold several tokens, one per line ('#' starts a comment), so an
admin can give each user their own and revoke one by deleting its line.
Standard library only: the client side runs where nothing but requests is installed.
"""
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from ..errors import SegmentationError

TOKEN_ENV = "TOTALSEG_SERVER_TOKEN"
TOKEN_FILE_NAME = "server_token"
MIN_TOKEN_LENGTH = 16


class TokenError(SegmentationError):
    """A token file that cannot be used (missing, readable by others, empty, too short)."""

    kind = "auth"


def default_token_file():
    """~/.totalsegmentator/server_token (or under $TOTALSEG_HOME_DIR), next to the licence key."""
    from ..weights import totalseg_home  # the weights package needs numpy: the client does without it

    return totalseg_home() / TOKEN_FILE_NAME


def mask_token(token):
    return f"****{token[-4:]}" if token and len(token) >= 12 else "****"


def _check_private(path):
    """Refuse a token file that others can read or write (POSIX permissions only)."""
    if os.name == "nt":
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"The token file {path} can be read or written by other users (mode {stat.S_IMODE(mode):o}).",
                         f"Make it private: chmod 600 {path}")


def read_tokens(path):
    """All tokens in a token file (one per line), checked; TokenError when there is none."""
    path = Path(path).expanduser()
    try:
        _check_private(path)
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TokenError(f"Token file not found: {path}",
                         "Check the path. Users: save the token the server's admin gave you in that file (chmod 600); "
                         "admins: python -m SegmentationLogic serve --generate_token FILE makes one.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenError(f"Cannot read the token file {path} ({type(e).__name__}).",
                         "Check that it is a readable text file.") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise TokenError(f"The token file {path} holds no token.", "Put the token on the first line.")
    for token in tokens:
        check_token(token, f"in {path}")
    return tokens


def check_token(token, where=""):
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() or not c.isprintable() for c in token) or not token.isascii():
        raise TokenError(f"A token {where} is too short or holds spaces or special characters (a token needs at least "
                         f"{MIN_TOKEN_LENGTH} printable ASCII characters).".replace("  ", " "),
                         "Make a strong one: python -m SegmentationLogic serve --generate_token FILE")
    return token


def token_from(token=None, token_file=None, use_default_file=False):
    """The token to use: given, else from `token_file`, else $TOTALSEG_SERVER_TOKEN, else the default file
    (when `use_default_file` and it exists). None when there is none anywhere."""
    if token:
        return check_token(token.strip(), "given")
    if token_file:
        return read_tokens(token_file)[0]
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return check_token(env, f"in ${TOKEN_ENV}")
    if use_default_file and default_token_file().is_file():
        return read_tokens(default_token_file())[0]
    return None


def write_token_file(path, token=None):
    """Write `token` (default: a new random one) to `path`, private (0600), atomically; return the path."""
    token = check_token(token.strip()) if token else secrets.token_urlsafe(32)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=path.parent)
    try:
        os.chmod(tmp, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def store_token(token, path=None):
    """Keep a user's token for later runs (the module's masked field); returns the file written."""
    return write_token_file(path or default_token_file(), token)


class TokenChecker:
    """Compares a presented token with the accepted ones in constant time."""

    def __init__(self, tokens):
        # digests: equal length whatever was sent, so the comparison time says nothing about the token
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    def __bool__(self):
        return bool(self._digests)

    def accepts(self, presented):
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        ok = False
        for d in self._digests:  # no early exit: every accepted token is compared
            ok |= hmac.compare_digest(d, digest)
        return ok
