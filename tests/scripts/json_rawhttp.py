"""A @rawhttp run() that reads the body with get_json(), as Flask-era scripts do."""

from azureml.contrib.services.aml_request import AMLRequest, rawhttp


def init():
    pass


@rawhttp
def run(request: AMLRequest):
    return {"got": request.get_json()}
