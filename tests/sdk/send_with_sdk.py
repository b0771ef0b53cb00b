"""Calls a running verimail with Huawei Cloud's official Python SDK, exactly
as a partner would: only the endpoint differs from Huawei Cloud.

Reads VERIMAIL_ENDPOINT, SDK_AK, SDK_SK, SDK_DOMAIN_ID, SDK_EMAIL from the
environment and prints one JSON object: the outcome as the SDK reports it.
"""
import json
import os

from huaweicloudsdkcore.auth.credentials import GlobalCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkbssintl.v2 import BssintlClient
from huaweicloudsdkbssintl.v2.model import (
    SendVerificationCodeV2Req,
    SendVerificationMessageCodeRequest,
)

config = HttpConfig.get_default_config()
config.retry_times = 0
config.timeout = (5, 10)
credentials = GlobalCredentials(os.environ["SDK_AK"], os.environ["SDK_SK"], os.environ["SDK_DOMAIN_ID"])
client = (
    BssintlClient.new_builder()
    .with_http_config(config)
    .with_credentials(credentials)
    .with_endpoint(os.environ["VERIMAIL_ENDPOINT"])
    .build()
)
body = SendVerificationCodeV2Req(receiver_type=2, timeout=10, email=os.environ["SDK_EMAIL"], lang="en-us")
try:
    response = client.send_verification_message_code(SendVerificationMessageCodeRequest(body=body))
    print(json.dumps({"status_code": response.status_code, "request_id": getattr(response, "request_id", None)}))
except exceptions.ClientRequestException as e:
    print(json.dumps({
        "status_code": e.status_code,
        "error_code": e.error_code,
        "error_msg": e.error_msg,
        "request_id": e.request_id,
    }))
