//! `/api/v1/<endpoint>` and its method onto an [`ApiRequest`], and replies onto HTTP
//! responses. Bodies are parsed and validated here, before anything reaches the control loop.

use serde::de::DeserializeOwned;

use super::config;
use super::http::{Method, Request, Response};
use super::request::{ApiError, ApiReply, ApiRequest};
use super::types::{DeviceConfigBody, DiskConfigBody, ErrorBody, NetConfigBody, RemoveDeviceBody, VmConfigBody};

const PREFIX: &str = "/api/v1/";

/// The endpoints and the method each takes (cloud-hypervisor's).
const ENDPOINTS: &[(&str, Method)] = &[
    ("vmm.ping", Method::Get),
    ("vmm.shutdown", Method::Put),
    ("vm.create", Method::Put),
    ("vm.boot", Method::Put),
    ("vm.info", Method::Get),
    ("vm.counters", Method::Get),
    ("vm.pause", Method::Put),
    ("vm.resume", Method::Put),
    ("vm.reboot", Method::Put),
    ("vm.shutdown", Method::Put),
    ("vm.power-button", Method::Put),
    ("vm.add-device", Method::Put),
    ("vm.remove-device", Method::Put),
    ("vm.add-disk", Method::Put),
    ("vm.add-net", Method::Put),
];

fn json_body<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!("{endpoint} needs a JSON body")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("{endpoint}: bad JSON body: {e}")))
}

fn no_body(endpoint: &str, body: &[u8]) -> Result<(), ApiError> {
    // curl -X PUT sends none; `-d ''` or `{}` is tolerated too.
    let text = String::from_utf8_lossy(body);
    match text.trim() {
        "" | "{}" => Ok(()),
        _ => Err(ApiError::bad_request(format!("{endpoint} takes no body"))),
    }
}

/// The request an HTTP request asks for, or the answer refusing it.
pub fn route(req: &Request) -> Result<ApiRequest, ApiError> {
    let endpoint = req
        .path
        .strip_prefix(PREFIX)
        .ok_or_else(|| ApiError::new(404, format!("unknown path {}: endpoints are under {PREFIX}", req.path)))?;
    let Some(&(name, method)) = ENDPOINTS.iter().find(|(n, _)| *n == endpoint) else {
        return Err(ApiError::new(404, format!("unknown endpoint {endpoint}")));
    };
    if req.method != method {
        let want = if method == Method::Get { "GET" } else { "PUT" };
        return Err(ApiError::new(405, format!("{name} takes {want}")));
    }
    let body = req.body.as_slice();
    let simple = |r: ApiRequest| no_body(name, body).map(|()| r);
    match name {
        "vmm.ping" => simple(ApiRequest::VmmPing),
        "vmm.shutdown" => simple(ApiRequest::VmmShutdown),
        "vm.create" => {
            let cfg: VmConfigBody = json_body(name, body)?;
            Ok(ApiRequest::VmCreate(Box::new(config::vm_config(&cfg)?)))
        }
        "vm.boot" => simple(ApiRequest::VmBoot),
        "vm.info" => simple(ApiRequest::VmInfo),
        "vm.counters" => simple(ApiRequest::VmCounters),
        "vm.pause" => simple(ApiRequest::VmPause),
        "vm.resume" => simple(ApiRequest::VmResume),
        "vm.reboot" => simple(ApiRequest::VmReboot),
        "vm.shutdown" => simple(ApiRequest::VmShutdown),
        "vm.power-button" => simple(ApiRequest::VmPowerButton),
        "vm.add-device" => {
            Ok(ApiRequest::VmAddDevice(config::add_device(&json_body::<DeviceConfigBody>(name, body)?)?))
        }
        "vm.remove-device" => {
            let RemoveDeviceBody { id } = json_body(name, body)?;
            if id.is_empty() {
                return Err(ApiError::bad_request("vm.remove-device: id is empty"));
            }
            Ok(ApiRequest::VmRemoveDevice { id })
        }
        "vm.add-disk" => Ok(ApiRequest::VmAddDisk(config::add_disk(&json_body::<DiskConfigBody>(name, body)?)?)),
        "vm.add-net" => Ok(ApiRequest::VmAddNet(config::add_net(&json_body::<NetConfigBody>(name, body)?)?)),
        _ => Err(ApiError::internal(format!("{name} has no route (internal error)"))),
    }
}

/// An error as the client sees it: the status and `{"error": "..."}`.
pub fn error_response(e: &ApiError) -> Response {
    let body = serde_json::to_string(&ErrorBody { error: e.message.clone() })
        .unwrap_or_else(|_| "{\"error\": \"unprintable error\"}".into());
    let mut r = Response::json(e.status, body);
    if e.status == 405 {
        r.allow = Some("GET, PUT");
    }
    r
}

/// The control loop's answer as an HTTP response.
pub fn reply_response(reply: ApiReply) -> Response {
    match reply {
        Ok(None) => Response::no_content(),
        Ok(Some(value)) => match serde_json::to_string(&value) {
            Ok(body) => Response::json(200, body),
            Err(e) => error_response(&ApiError::internal(format!("encoding the answer failed: {e}"))),
        },
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, body: &str) -> Request {
        Request { method, path: path.into(), body: body.as_bytes().to_vec() }
    }

    #[test]
    fn every_endpoint_routes() {
        for (name, method) in ENDPOINTS {
            let body = match *name {
                "vm.create" => r#"{"payload": {"kernel": "/k"}}"#,
                "vm.add-device" => r#"{"path": "/sys/bus/pci/devices/0000:02:00.0", "id": "nvme0"}"#,
                "vm.remove-device" => r#"{"id": "nvme0"}"#,
                "vm.add-disk" => r#"{"path": "/tmp/d.img"}"#,
                "vm.add-net" => r#"{"tap": "tap0"}"#,
                _ => "",
            };
            let r = route(&req(*method, &format!("{PREFIX}{name}"), body)).unwrap();
            assert_eq!(r.name(), *name);
        }
    }

    #[test]
    fn refusals() {
        for (method, path, body, status) in [
            (Method::Get, "/", "", 404),
            (Method::Get, "/api/v2/vmm.ping", "", 404),
            (Method::Get, "/api/v1/vm.nope", "", 404),
            (Method::Get, "/api/v1/", "", 404),
            (Method::Put, "/api/v1/vmm.ping", "", 405),
            (Method::Get, "/api/v1/vm.pause", "", 405),
            (Method::Other, "/api/v1/vm.info", "", 405),
            (Method::Put, "/api/v1/vm.pause", "{\"now\": true}", 400),
            (Method::Put, "/api/v1/vm.create", "", 400),
            (Method::Put, "/api/v1/vm.create", "{", 400),
            (Method::Put, "/api/v1/vm.create", "[]", 400),
            (Method::Put, "/api/v1/vm.create", "{\"payload\": {}}", 400),
            (Method::Put, "/api/v1/vm.add-device", "{\"path\": \"/sys/bus/pci/devices/zz\"}", 400),
            (Method::Put, "/api/v1/vm.add-device", "\u{0}\u{1}", 400),
            (Method::Put, "/api/v1/vm.remove-device", "{\"id\": \"\"}", 400),
            (Method::Put, "/api/v1/vm.add-disk", "{\"path\": \"/d\", \"readonly\": \"yes\"}", 400),
        ] {
            let e = route(&req(method, path, body)).unwrap_err();
            assert_eq!(e.status, status, "{method:?} {path} {body}: {e}");
            let r = error_response(&e);
            let parsed: ErrorBody = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            assert_eq!(parsed.error, e.message);
        }
        assert_eq!(error_response(&ApiError::new(405, "x")).allow, Some("GET, PUT"));
    }

    #[test]
    fn replies() {
        assert_eq!(reply_response(Ok(None)).status, 204);
        let r = reply_response(Ok(Some(serde_json::json!({"id": "a", "bdf": "0000:00:05.0"}))));
        assert_eq!((r.status, r.body.as_deref()), (200, Some(r#"{"bdf":"0000:00:05.0","id":"a"}"#)));
        assert_eq!(reply_response(Err(ApiError::conflict("no VM"))).status, 409);
    }
}
