"""Remote processing: a segmentation server on a GPU machine, and its client.

    python -m SegmentationLogic serve --host 0.0.0.0 --tls_cert C --tls_key K --token_file T   # the GPU machine
    python -m SegmentationLogic segment -i ct.nii.gz -o seg.nii.gz --server https://gpu:8470  # any machine
    RemoteSegmenter(url, token_file=..., ca_cert=...).run(request)                            # Python

Modules: protocol (the HTTP contract, shared), tokens (access tokens), client
(RemoteSegmenter: standard library + requests only), and on the server: jobs (queue,
one warm engine, job folders), uploads (first look at an upload), app (FastAPI routes),
cli (`serve`, `segment --server`). Nothing here is imported by `import SegmentationLogic`.
"""
