"""The BIDS-App release pipeline: isyb BIDS_DIR OUTPUT_DIR participant|group."""
