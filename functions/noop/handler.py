"""A function that does nothing: the overhead benchmark's baseline. Returns ``{}`` at once."""


def handle(event, context):
    return {"statusCode": 200, "body": b"{}", "headers": {"Content-Type": "application/json"}}
