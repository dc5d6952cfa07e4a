#!/usr/bin/env python3
"""Talks to a kube-apiserver with nothing but the standard library and PyYAML (no kubectl here).

Used by scripts/check-charts.sh. The server comes from the environment that e2e/controlplane/up.sh
writes to controlplane.env: API_URL, CA_FILE, ADMIN_TOKEN.

  kube-dry-run.py dry-run [--namespace NS] [--skip-kind KIND]... FILE...
      server-side dry run (dryRun=All, fieldValidation=Strict) of every document; fails on any rejection
  kube-dry-run.py expect-reject [--namespace NS] FILE...
      every document must be REJECTED by the dry run (proves the validation really runs), with an
      error message containing its annotation check-charts.akidb.io/expect-error
  kube-dry-run.py create [--namespace NS] FILE...
      create for real (already existing is fine)
  kube-dry-run.py wait-crd NAME
      wait until the CRD is Established
  kube-dry-run.py access --user USER (--allow | --deny) 'VERB RESOURCE[.GROUP][/SUB] [NS] [NAME]'...
      SubjectAccessReview for a service account (system:serviceaccount:NS:NAME) or user
  kube-dry-run.py token NAMESPACE SERVICEACCOUNT
      print a one-hour token of the service account (TokenRequest)
  kube-dry-run.py get PATH [JSONPATH.DOTTED]
      GET an API path; print the JSON, or the value at the dotted path (e.g. status.phase)
"""
import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

import yaml

# On documents given to expect-reject: a fragment the API server's error message must contain.
EXPECT_ANNOTATION = "check-charts.akidb.io/expect-error"


class Api:
    def __init__(self):
        try:
            self.url = os.environ["API_URL"].rstrip("/")
            self.token = os.environ["ADMIN_TOKEN"]
            self.ctx = ssl.create_default_context(cafile=os.environ["CA_FILE"])
        except KeyError as e:
            sys.exit(f"kube-dry-run: {e.args[0]} is not set (source the control plane's controlplane.env)")
        self.discovery = {}

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}"), resp.headers.get_all("Warning") or []
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"message": raw.decode(errors="replace")}
            return e.code, payload, e.headers.get_all("Warning") or []

    def resource(self, api_version, kind):
        """(plural, namespaced) of KIND in API_VERSION, from the server's discovery."""
        if api_version not in self.discovery:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, body, _ = self.call("GET", path)
            self.discovery[api_version] = body.get("resources", []) if status == 200 else []
        for r in self.discovery[api_version]:
            if r["kind"] == kind and "/" not in r["name"]:
                return r["name"], r["namespaced"]
        return None, None

    def collection_path(self, doc, namespace):
        api_version, kind = doc["apiVersion"], doc["kind"]
        plural, namespaced = self.resource(api_version, kind)
        if plural is None:
            return None, f"{api_version} {kind} is not served by this API server"
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            ns = doc.get("metadata", {}).get("namespace") or namespace
            return f"{prefix}/namespaces/{ns}/{plural}", None
        return f"{prefix}/{plural}", None


def documents(files):
    for f in files:
        with open(f) as fh:
            for i, doc in enumerate(yaml.safe_load_all(fh)):
                if doc:  # helm leaves empty documents between templates
                    yield f, i, doc


def describe(f, i, doc):
    md = doc.get("metadata", {})
    ns = md.get("namespace")
    name = f"{ns}/{md.get('name')}" if ns else md.get("name")
    return f"{os.path.basename(f)}#{i} {doc.get('kind')} {name}"


def post_all(api, files, namespace, dry_run, skip_kinds=(), expect_reject=False):
    failures = 0
    for f, i, doc in documents(files):
        what = describe(f, i, doc)
        if doc.get("kind") in skip_kinds:
            print(f"  skip    {what} (its CRD is not installed here; checked separately)")
            continue
        path, err = api.collection_path(doc, namespace)
        if err:
            print(f"  FAIL    {what}: {err}")
            failures += 1
            continue
        query = "?dryRun=All&fieldValidation=Strict" if dry_run else "?fieldValidation=Strict"
        status, body, warnings = api.call("POST", path + query, doc)
        # 409 AlreadyExists: the server validates before it looks for an existing object, so the
        # document passed (namespaces the check created for real hit this).
        exists = status == 409 and body.get("reason") == "AlreadyExists"
        ok = 200 <= status < 300 or exists
        for w in warnings:
            print(f"  warning {what}: {w}")
        if expect_reject:
            # The annotation names the reason, so a rejection for an unrelated cause does not count.
            want = doc.get("metadata", {}).get("annotations", {}).get(EXPECT_ANNOTATION, "")
            message = str(body.get("message", status))
            if ok:
                print(f"  FAIL    {what}: accepted, but it must be rejected")
                failures += 1
            elif want not in message:
                print(f"  FAIL    {what}: rejected, but not for '{want}': {message}")
                failures += 1
            else:
                print(f"  ok      {what} rejected: {message}")
        elif ok:
            print(f"  ok      {what}" + (" (valid; already exists)" if exists else ""))
        else:
            print(f"  FAIL    {what}: HTTP {status}: {body.get('message', body)}")
            failures += 1
    return failures


def wait_crd(api, name, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body, _ = api.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        if status == 200:
            conds = body.get("status", {}).get("conditions", [])
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                # Discovery of the new group can lag a moment behind Established.
                group, version = body["spec"]["group"], body["spec"]["versions"][0]["name"]
                if api.call("GET", f"/apis/{group}/{version}")[0] == 200:
                    print(f"  ok      CRD {name} established")
                    return 0
        time.sleep(0.5)
    print(f"  FAIL    CRD {name} not established within {timeout}s")
    return 1


def access(api, user, checks, want_allowed):
    """One SubjectAccessReview per 'VERB RESOURCE[.GROUP][/SUB] [NAMESPACE] [NAME]'."""
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        ns = user.split(":")[2]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    failures = 0
    for check in checks:
        parts = check.split()
        verb, res = parts[0], parts[1]
        ns = parts[2] if len(parts) > 2 and parts[2] != "-" else ""
        name = parts[3] if len(parts) > 3 else ""
        res, _, sub = res.partition("/")
        resource, _, group = res.partition(".")
        attrs = {"verb": verb, "resource": resource, "group": group, "subresource": sub,
                 "namespace": ns, "name": name}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "resourceAttributes": attrs}}
        status, resp, _ = api.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
        if status != 201 and status != 200:
            print(f"  FAIL    access review '{check}': HTTP {status}: {resp.get('message')}")
            failures += 1
            continue
        allowed = resp.get("status", {}).get("allowed", False)
        verdict = "allowed" if allowed else "denied"
        if allowed == want_allowed:
            print(f"  ok      {verdict:7} {check}")
        else:
            print(f"  FAIL    {verdict:7} {check} (expected {'allowed' if want_allowed else 'denied'})")
            failures += 1
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("dry-run", "expect-reject", "create"):
        s = sub.add_parser(name)
        s.add_argument("--namespace", default="default")
        s.add_argument("--skip-kind", action="append", default=[])
        s.add_argument("files", nargs="+")
    s = sub.add_parser("wait-crd")
    s.add_argument("name")
    s = sub.add_parser("access")
    s.add_argument("--user", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--allow", action="store_true")
    g.add_argument("--deny", action="store_true")
    s.add_argument("checks", nargs="+")
    s = sub.add_parser("token")
    s.add_argument("namespace")
    s.add_argument("serviceaccount")
    s = sub.add_parser("get")
    s.add_argument("path")
    s.add_argument("field", nargs="?")
    a = p.parse_args()

    api = Api()
    if a.cmd == "token":
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600}}
        status, resp, _ = api.call(
            "POST", f"/api/v1/namespaces/{a.namespace}/serviceaccounts/{a.serviceaccount}/token", body)
        if status not in (200, 201):
            sys.exit(f"kube-dry-run: token for {a.namespace}/{a.serviceaccount}: HTTP {status}: {resp.get('message')}")
        print(resp["status"]["token"])
        return
    if a.cmd == "get":
        status, resp, _ = api.call("GET", a.path)
        if status != 200:
            sys.exit(f"kube-dry-run: GET {a.path}: HTTP {status}: {resp.get('message')}")
        for key in (a.field.split(".") if a.field else []):
            resp = resp.get(key, {}) if isinstance(resp, dict) else {}
        print(resp if isinstance(resp, str) else json.dumps(resp))
        return
    if a.cmd == "dry-run":
        failures = post_all(api, a.files, a.namespace, True, a.skip_kind)
    elif a.cmd == "expect-reject":
        failures = post_all(api, a.files, a.namespace, True, expect_reject=True)
    elif a.cmd == "create":
        failures = post_all(api, a.files, a.namespace, False, a.skip_kind)
    elif a.cmd == "wait-crd":
        failures = wait_crd(api, a.name)
    else:
        failures = access(api, a.user, a.checks, a.allow)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
