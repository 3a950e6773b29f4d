"""The click gateway: SmartLink redirects, click recording, admin and conversion APIs."""
