from xjobs.authorizer import authorize


def lambda_handler(event, context):
    return authorize(event)
