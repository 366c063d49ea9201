#!/usr/bin/env python3
"""Vendor the web assets of Great Expectations Data Docs pages into the provider package.

GE 1.x writes Data Docs pages that load Bootstrap, jQuery, popper.js, bootstrap-table,
bootstrap-datepicker, Font Awesome, bootstrap-dark and Vega / Vega-Lite / Vega-Embed from
public CDNs, and its logo from an S3 bucket (see ``great_expectations/render/view/templates/
page.j2``, ``index_page.j2``, ``js_script_imports.j2``, ``top_navbar.j2`` and
``static/styles/data_docs_default_styles.css``). Without internet the pages render unstyled
and their scripts fail, so the plugin (``airflow_mlops.plugins.data_docs``) rewrites those
URLs to copies served by the API server itself.

This script (re)creates ``provider/airflow_mlops/plugins/static/vendor``:

* the exact npm release each CDN URL names (``@5``/``@6`` majors: the newest release of that
  major, which is what jsDelivr serves for them), fetched from registry.npmjs.org, checked
  against the sha512 ``dist.integrity`` pinned below, and only the files the pages use (and
  the fonts their CSS needs) plus each package's licence file;
* GE's own logo from the installed ``great_expectations`` package (the S3 images are not in
  any package; the dark-mode logo is replaced by the same logo);
* ``assets.json``: CDN URL -> vendored file (what the plugin rewrites), with sha256 of each
  file; ``README.md``: library, version, licence, source of every file.

Run it with the project venv (``.venv/bin/python scripts/vendor_data_docs_assets.py``) after
a Great Expectations upgrade changes the CDN URLs in its templates; ``--check`` only verifies
the committed files against a fresh download.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "provider" / "airflow_mlops" / "plugins" / "static" / "vendor"
REGISTRY = "https://registry.npmjs.org"
GE_S3 = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com"


@dataclass(frozen=True)
class Package:
    """One npm release, the files of it that Data Docs pages load, and the URLs they use."""

    name: str
    version: str
    licence: str
    integrity: str  # the registry's dist.integrity of the tarball
    #: file in the package -> CDN URLs (as written in GE's templates) it stands for
    files: dict[str, tuple[str, ...]]
    #: folders of the package copied whole (fonts the CSS refers to)
    folders: tuple[str, ...] = ()
    licence_files: tuple[str, ...] = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")
    homepage: str = ""
    #: (tarball, integrity, file) to take the licence from when the package ships none
    licence_from: tuple[str, str, str] | None = None

    @property
    def folder(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}"

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


PACKAGES = [
    Package(
        "jquery",
        "3.7.1",
        "MIT",
        "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
        {"dist/jquery.min.js": ("https://code.jquery.com/jquery-3.7.1.min.js",)},
        homepage="https://jquery.com",
    ),
    Package(
        "popper.js",
        "1.12.9",
        "MIT",
        "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
        {
            "dist/umd/popper.min.js": (
                "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js",
            )
        },
        licence_files=(),  # the tarball has none: the MIT notice is the header of popper.min.js
        homepage="https://popper.js.org",
    ),
    Package(
        "bootstrap",
        "4.3.1",
        "MIT",
        "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
        {
            "dist/css/bootstrap.min.css": (
                "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css",
            ),
            "dist/js/bootstrap.min.js": (
                "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js",
            ),
        },
        homepage="https://getbootstrap.com",
    ),
    Package(
        "bootstrap-table",
        "1.19.1",
        "MIT",
        "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
        {
            "dist/bootstrap-table.min.css": (
                "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css",
            ),
            "dist/bootstrap-table.min.js": (
                "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js",
            ),
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
                "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
                "bootstrap-table-filter-control.min.js",
            ),
        },
        homepage="https://bootstrap-table.com",
    ),
    Package(  # GE's templates take the filter-control stylesheet from 1.19.0
        "bootstrap-table",
        "1.19.0",
        "MIT",
        "sha512-L+USHm3X9FKocx/6yngGu12yF6r6s1Ntuc+hoIK2a2QQJjHw5kcySLiE2HY/9sEaSGAOfPbfQOtBH3uKkcpqEA==",
        {
            "dist/extensions/filter-control/bootstrap-table-filter-control.css": (
                "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
                "bootstrap-table-filter-control.css",
            ),
            "dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
                "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
                "bootstrap-table-filter-control.min.css",
            ),
        },
        homepage="https://bootstrap-table.com",
    ),
    Package(
        "bootstrap-datepicker",
        "1.9.0",
        "Apache-2.0",
        "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
        {
            "dist/css/bootstrap-datepicker.min.css": (
                "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css",
            ),
            "dist/js/bootstrap-datepicker.min.js": (
                "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js",
            ),
        },
        homepage="https://github.com/uxsolutions/bootstrap-datepicker",
    ),
    Package(
        "@fortawesome/fontawesome-free",
        "6.6.0",
        "CC-BY-4.0 (icons) AND OFL-1.1 (fonts) AND MIT (code)",
        "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
        {"css/all.min.css": ("https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css",)},
        folders=("webfonts",),
        licence_files=("LICENSE.txt",),
        homepage="https://fontawesome.com",
    ),
    Package(
        "@forevolve/bootstrap-dark",
        "1.1.0",
        "MIT",
        "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
        {
            "dist/css/bootstrap-prefers-dark.css": (
                "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",
            )
        },
        homepage="https://github.com/ForEvolve/bootstrap-dark",
    ),
    Package(  # GE asks jsDelivr for vega@5: the newest 5.x release
        "vega",
        "5.33.1",
        "BSD-3-Clause",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        {"build/vega.min.js": ("https://cdn.jsdelivr.net/npm/vega@5",)},
        licence_files=(),
        homepage="https://vega.github.io/vega",
        # the vega tarball has no licence file: the vega monorepo's, as one of its packages ships it
        licence_from=(
            f"{REGISTRY}/vega-dataflow/-/vega-dataflow-5.7.7.tgz",
            "sha512-R2NX2HvgXL+u4E6u+L5lKvvRiCtnE6N6l+umgojfi53suhhkFP+zB+2UAQo4syxuZ4763H1csfkKc4xpqLzKnw==",
            "LICENSE",
        ),
    ),
    Package(  # vega-lite@5: the newest 5.x release
        "vega-lite",
        "5.23.0",
        "BSD-3-Clause",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        {"build/vega-lite.min.js": ("https://cdn.jsdelivr.net/npm/vega-lite@5",)},
        homepage="https://vega.github.io/vega-lite",
    ),
    Package(  # vega-embed@6: the newest 6.x release
        "vega-embed",
        "6.29.0",
        "BSD-3-Clause",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        {"build/vega-embed.min.js": ("https://cdn.jsdelivr.net/npm/vega-embed@6",)},
        homepage="https://github.com/vega/vega-embed",
    ),
]

#: GE's logo: the navbar <img> (light) and the dark-mode CSS background. Neither is in a
#: package; the installed GE ships the light one as static/images/logo-long.png.
GE_LOGO_URLS = (f"{GE_S3}/logo-long.png", f"{GE_S3}/full_logo_dark.png")
#: images of the installed GE package that are vendored: the logo, and the favicon (GE's
#: validation pages point one folder short of their site's copy)
GE_IMAGES = ("logo-long.png", "favicon.ico")
#: relative references to a site's own ``static/`` files served from the vendored copy instead
SITE_FILES = {"static/images/favicon.ico": "images/favicon.ico"}


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "airflow-provider-mlops vendoring"})
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - fixed https URLs
        return response.read()


def _check_integrity(data: bytes, integrity: str, what: str) -> None:
    algo, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{what}: {algo} {actual} does not match the pinned integrity {expected}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flat(name: str) -> str:
    """
    ``name`` without a leading ``dist/`` or ``build/`` folder.

    The repository's ``.gitignore`` ignores every ``dist/`` and ``build/`` folder, and the wheel
    (hatchling) leaves out what git ignores: vendored files must not live in such a folder.
    Only the top folder goes, so relative references between the files (Font Awesome's
    ``css/`` -> ``../webfonts/``) still hold.
    """
    first, _, rest = name.partition("/")
    return rest if first in ("dist", "build") and rest else name


def _vendor_package(pkg: Package, out: Path, assets: dict, files: list) -> None:
    data = _fetch(pkg.tarball)
    _check_integrity(data, pkg.integrity, pkg.tarball)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile() and "/" in m.name}

        def copy(name: str) -> str:
            rel = f"{pkg.folder}/{_flat(name)}"
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(members[name]).read())
            files.append({"path": rel, "sha256": _sha256(dest), "package": pkg.name, "version": pkg.version})
            return rel

        for name, urls in pkg.files.items():
            if name not in members:
                raise SystemExit(f"{pkg.name}@{pkg.version} has no {name}")
            rel = copy(name)
            for url in urls:
                assets[url] = rel
        for folder in pkg.folders:
            for name in sorted(n for n in members if n.startswith(folder + "/")):
                copy(name)
        licences = [n for n in pkg.licence_files if n in members]
        if pkg.licence_files and not licences:
            raise SystemExit(f"{pkg.name}@{pkg.version}: no licence file among {pkg.licence_files}")
        for name in licences:
            copy(name)
    if pkg.licence_from:
        tarball, integrity, name = pkg.licence_from
        data = _fetch(tarball)
        _check_integrity(data, integrity, tarball)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            dest = out / pkg.folder / name
            dest.write_bytes(tar.extractfile(f"package/{name}").read())
        files.append(
            {
                "path": f"{pkg.folder}/{name}",
                "sha256": _sha256(dest),
                "package": pkg.name,
                "version": pkg.version,
            }
        )


def _vendor_ge_logo(out: Path, assets: dict, files: list) -> str:
    from importlib import metadata, resources

    version = metadata.version("great-expectations")
    folder = f"great-expectations-{version}"
    images = resources.files("great_expectations.render.view").joinpath("static", "images")
    for name in GE_IMAGES:
        dest = out / folder / "images" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(images.joinpath(name).read_bytes())
        files.append(
            {
                "path": f"{folder}/images/{name}",
                "sha256": _sha256(dest),
                "package": "great-expectations",
                "version": version,
            }
        )
    rel = f"{folder}/images/logo-long.png"
    licence = Path(metadata.distribution("great-expectations").locate_file("")).glob(
        "great_expectations-*.dist-info/licenses/LICENSE"
    )
    licence_file = next(iter(sorted(licence)), None)
    if licence_file is not None:
        (out / folder / "LICENSE").write_bytes(licence_file.read_bytes())
        files.append(
            {
                "path": f"{folder}/LICENSE",
                "sha256": _sha256(out / folder / "LICENSE"),
                "package": "great-expectations",
                "version": version,
            }
        )
    for url in GE_LOGO_URLS:
        assets[url] = rel
    return version


def _site_files(ge_version: str) -> dict[str, str]:
    return {name: f"great-expectations-{ge_version}/{path}" for name, path in SITE_FILES.items()}


def _readme(ge_version: str) -> str:
    lines = [
        "# Vendored web assets of Great Expectations Data Docs",
        "",
        "Great Expectations writes Data Docs pages that load these files from public CDNs. The",
        "MLOps plugin (`airflow_mlops/plugins/data_docs.py`) rewrites those URLs when it serves a",
        "page, to these copies served at `/mlops/static/vendor/...`, so Data Docs work without",
        "internet access. `assets.json` maps each CDN URL to its file here (and lists the sha256 of",
        "every file).",
        "",
        "Generated by `scripts/vendor_data_docs_assets.py` (run it with the project venv to refresh",
        "after a Great Expectations upgrade; `--check` verifies these files against the registry).",
        "Do not edit the files by hand.",
        "",
        "| folder | library | version | licence | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for pkg in PACKAGES:
        lines.append(
            f"| `{pkg.folder}/` | [{pkg.name}]({pkg.homepage}) | {pkg.version} | {pkg.licence}"
            f" | {pkg.tarball} |"
        )
    lines.append(
        f"| `great-expectations-{ge_version}/` | [great-expectations](https://greatexpectations.io) |"
        f" {ge_version} | Apache-2.0 | `great_expectations/render/view/static/images/` (logo-long.png,"
        " favicon.ico) of the installed package |"
    )
    lines += [
        "",
        "Files keep their path in the package, less a leading `dist/` or `build/` folder (git, and",
        "so the wheel, ignore every folder of those names in this repository).",
        "Each folder holds the package's own licence file (popper.js: the MIT header of its file;",
        "vega: the vega monorepo's BSD-3-Clause licence, from `vega-dataflow@5.7.7`).",
        "`vega@5`, `vega-lite@5` and `vega-embed@6` are major-version ranges in GE's templates;",
        "the newest release of each major (what jsDelivr serves for them) is vendored.",
        f"GE's logo is loaded from `{GE_S3}` (with a tracking query string);",
        "both it and the dark-mode logo are replaced by the logo shipped in the GE package.",
        "`site_files` in `assets.json`: relative references to a site's own static files that are",
        "served from here instead (GE's validation pages point one folder short of the favicon).",
        "",
    ]
    return "\n".join(lines)


def build(out: Path) -> None:
    assets: dict[str, str] = {}
    files: list[dict] = []
    for pkg in PACKAGES:
        print(f"{pkg.name}@{pkg.version}", file=sys.stderr)
        _vendor_package(pkg, out, assets, files)
    ge_version = _vendor_ge_logo(out, assets, files)
    manifest = {
        "generated_by": "scripts/vendor_data_docs_assets.py",
        "assets": dict(sorted(assets.items())),
        "site_files": _site_files(ge_version),
        "files": sorted(files, key=lambda f: f["path"]),
    }
    (out / "assets.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "README.md").write_text(_readme(ge_version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check", action="store_true", help="compare a fresh download with the vendored files"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "vendor"
        fresh.mkdir()
        build(fresh)
        if args.check:
            old = sorted(p.relative_to(VENDOR) for p in VENDOR.rglob("*") if p.is_file())
            new = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
            differ = [
                str(p) for p in new if p not in old or (VENDOR / p).read_bytes() != (fresh / p).read_bytes()
            ]
            differ += [str(p) for p in old if p not in new]
            if differ:
                raise SystemExit(
                    "vendored Data Docs assets differ from a fresh download: " + ", ".join(differ)
                )
            print(f"{VENDOR}: up to date ({len(new)} files)")
            return
        if VENDOR.exists():
            shutil.rmtree(VENDOR)
        shutil.copytree(fresh, VENDOR)
    print(f"vendored {len(files_in(VENDOR))} files into {VENDOR.relative_to(REPO)}")


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


if __name__ == "__main__":
    main()
