"""The S3 CSI driver: buckets or prefixes as volumes, mounted with s3fs-fuse or rclone."""
