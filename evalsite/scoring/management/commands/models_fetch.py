"""Fill the model store from the official URLs, checksums verified (the only command that downloads weights)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from metrics.embedders.fetch import fetch_file, fetch_targets, resolve_targets
from metrics.embedders.store import ModelStore


class Command(BaseCommand):
    help = (
        "Download the weight files of the named embedders (or --all) from their official URLs into the "
        "model store, verify each against the checksum written in the code and store it atomically. "
        "Files already present with the right checksum are kept; a present file with a wrong checksum "
        "is reported and left alone unless --replace is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", metavar="NAME", help="embedder names (see --list)")
        parser.add_argument("--all", action="store_true", help="every file in the catalogue")
        parser.add_argument(
            "--list", action="store_true", help="list the names and their files, download nothing"
        )
        parser.add_argument("--store", default=None, help="model store root (default: EVALSITE_MODEL_STORE)")
        parser.add_argument(
            "--mirror",
            default=None,
            metavar="URL",
            help="fetch URL/<subdir>/<file name> (a copy of the store layout) instead of the "
            "official URLs; checksums are verified all the same",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="replace a present file whose checksum does not match (after the new one verifies)",
        )

    def handle(self, *args, **opts):
        targets = fetch_targets()
        if opts["list"]:
            for name, files in targets.items():
                self.stdout.write(
                    f"{name}: {', '.join(f'{f.relpath} [{f.describe_digest()}]' for f in files)}"
                )
            return
        if opts["all"] == bool(opts["names"]):
            raise CommandError(f"name one or more models, or pass --all. Valid names: {', '.join(targets)}")
        try:
            remotes = resolve_targets(sorted(targets) if opts["all"] else opts["names"])
        except KeyError as exc:
            raise CommandError(exc.args[0]) from None
        store = ModelStore(opts["store"] or settings.EVALSITE_MODEL_STORE)
        failed = 0
        for remote in remotes:
            result = fetch_file(remote, store, mirror=opts["mirror"], replace=opts["replace"])
            if result.ok:
                self.stdout.write(
                    f"{result.status:<8} {result.path}  {result.message}  sha256={result.sha256}"
                )
            else:
                failed += 1
                self.stderr.write(f"failed   {result.path}  {result.message}")
        if failed:
            raise CommandError(
                f"{failed} of {len(remotes)} file(s) failed; the store holds only verified files"
            )
        self.stdout.write(f"{len(remotes)} file(s) verified in {store.root}")
