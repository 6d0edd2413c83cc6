"""Training of networks before a reconstruction: EDIP warm starts on synthetic data and the
learned denoiser of admm / hqs-denoiser / red."""
