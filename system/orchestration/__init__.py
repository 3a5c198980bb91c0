"""The orchestration layer: the driver that runs a config's stages (`driver`), one stage's
processes declared in one place with their recovery (`topology`, `recovery`), placement groups
and the weight-sync rendezvous (`placement`), and run set-up checks (`runtime`)."""
