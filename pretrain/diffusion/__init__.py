"""Diffusion objectives and samplers for the DiT: rectified flow (velocity prediction) and DDPM
(noise prediction), Euler / DDIM / DDPM samplers with classifier-free guidance, PNG grids."""
