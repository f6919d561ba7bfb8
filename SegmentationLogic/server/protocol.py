"""The HTTP protocol between `RemoteSegmenter` (client.py) and the server (app.py).

    GET    /v1/info                  server version, upload limit, queue length
    POST   /v1/jobs                  body: the image file's bytes; headers: FORMAT_HEADER (an INPUT_FORMATS key),
                                     REQUEST_HEADER (JSON: SegmentRequest fields except SERVER_FIELDS),
                                     OUTPUT_HEADER (nii.gz | nii, the labelmap's file type)
                                     -> 201 {"id", "position"}
    GET    /v1/jobs/{id}/events      NDJSON: the `--progress json` events, ending with `result` or `error`
                                     (blank lines are keep-alives); closing it before the end cancels the job
    GET    /v1/jobs/{id}/result      a zip (stored) of the run's output files under RESULT names; after it
                                     is sent, everything of the job is deleted on the server
    DELETE /v1/jobs/{id}             cancel, and delete everything of the job
Every request carries `Authorization: Bearer <token>`. Errors are JSON objects with the
keys of an `error` event: kind, type, cause, fix.
Standard library only: the client imports it.
"""
import ipaddress
import socket
API = "/v1"
API_VERSION = 1
DEFAULT_PORT = 8470

FORMAT_HEADER = "X-TotalSeg-Format"
REQUEST_HEADER = "X-TotalSeg-Request"
OUTPUT_HEADER = "X-TotalSeg-Output"

# format -> the server's name for the upload (the reader picks the format by the name)
INPUT_FORMATS = {"nii.gz": "input.nii.gz", "nii": "input.nii", "nrrd": "input.nrrd", "mha": "input.mha",
                 "zip": "input.zip"}
OUTPUT_FORMATS = ("nii.gz", "nii")
LABELMAP_NAME = "seg"  # the labelmap in the result zip: seg.nii.gz (or seg.nii), its label table seg.labels.json

# decided by the server's admin, never by a client (paths on the server, its GPU, its downloads)
SERVER_FIELDS = ("input", "output", "weights_dir", "device", "download", "statistics_file", "save_probabilities",
                 "report")

TERMINAL_EVENTS = ("result", "error")
HEARTBEAT_SECONDS = 5.0  # a blank line this often keeps idle proxies (and the client's read time-out) happy


def input_format(name):
    """The INPUT_FORMATS key for a file name (case-insensitive), or None."""
    name = name.lower()
    for fmt in sorted(INPUT_FORMATS, key=len, reverse=True):  # "nii.gz" before "nii"
        if name.endswith("." + fmt):
            return fmt
    return None


def is_loopback(host):
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
