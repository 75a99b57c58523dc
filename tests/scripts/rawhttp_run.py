from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request: AMLRequest):
    if request.method == "GET":
        return AMLResponse(
            {"args": request.args.to_dict(), "path": request.full_path, "url": request.url}, 200, json_str=True
        )
    if request.method == "OPTIONS":
        return AMLResponse("", 204, {"Allow": "GET, POST, OPTIONS"})
    body = request.get_data()
    if body == b"fail":
        return AMLResponse("server side failure", 503)
    return AMLResponse(
        body[::-1],
        201,
        {
            "X-Custom": "a,b",
            "Content-Type": "application/octet-stream",
            "X-Rid": request.headers.get("x-request-id", ""),
        },
    )
