"""Start azmlinfsrv (azureml-inference-server-http) bound to 127.0.0.1.

azmlinfsrv has no host flag and binds 0.0.0.0. Its ``amlserver.run()`` reads the
module global ``DEFAULT_HOST`` at call time, so setting it first is enough; every
other flag and environment variable works as documented. Runs in the azmlinfsrv
virtualenv (loadtests/.venv-aml), so it imports nothing but that package.

    loadtests/.venv-aml/bin/python loadtests/aml_serve.py --entry_script S --model_dir D --port N
"""

from azureml_inference_server_http import amlserver  # type: ignore[import-not-found]


def main() -> None:
    amlserver.DEFAULT_HOST = "127.0.0.1"
    amlserver.run()


if __name__ == "__main__":
    main()
