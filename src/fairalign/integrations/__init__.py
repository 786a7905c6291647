"""Integrations of fairalign's methods into other training frameworks (TRL, verl)."""
