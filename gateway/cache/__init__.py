"""The response cache (issue 5, in progress): keys and storage backends. Not yet
wired into the pipeline."""
