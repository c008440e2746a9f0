"""What the cloud providers share, whatever the vendor: backoff for throttled calls (``retry``), the
preflight report (``preflight``) and the AWS clients and error mapping (``aws``)."""
