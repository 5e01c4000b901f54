//! VF settings (MAC, VLAN, trust, spoof check, link state) through rtnetlink on the PF's
//! network interface: the same requests `ip link set DEV vf N ...` sends, made with the
//! rust-netlink crates over a synchronous socket.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::str::FromStr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac, VfInfoSpoofCheck,
    VfInfoTrust, VfInfoVlan, VfLinkState as NlLinkState,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use pci::Bdf;

use super::PciHost;

#[derive(Debug, thiserror::Error)]
pub enum VfError {
    #[error("no PCI device or network interface '{spec}' on this host (see `viaductctl list --class net`)")]
    UnknownPf { spec: String },
    #[error("{bdf} is not an SR-IOV physical function (it has no sriov_totalvfs)")]
    NotSriov { bdf: Bdf },
    #[error("{bdf} has no network interface (is its driver bound?); VF settings go through the PF's netdev")]
    NoInterface { bdf: Bdf },
    #[error("{bdf} has {num_vfs} VFs, so VF index {index} does not exist (create VFs with `viaductctl sriov`)")]
    VfOutOfRange { bdf: Bdf, index: u32, num_vfs: u32 },
    #[error("'{input}' is not a unicast MAC address (expected six hex bytes like 02:00:00:00:00:01)")]
    BadMac { input: String },
    #[error("VLAN {vlan} out of range: 0 (none) to 4095")]
    BadVlan { vlan: u32 },
    #[error("QoS {qos} out of range: 0 to 7")]
    BadQos { qos: u32 },
    #[error("reading the ifindex of {ifname}")]
    Ifindex {
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("opening an rtnetlink socket")]
    OpenSocket(#[source] io::Error),
    #[error("{ifname}: {what}")]
    Request {
        ifname: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{ifname}: undecodable rtnetlink reply: {reason}")]
    Decode { ifname: String, reason: String },
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl FromStr for MacAddr {
    type Err = VfError;

    /// Six colon- or dash-separated hex bytes; unicast only (all zeros is allowed: drivers
    /// take it as "clear the administrative MAC").
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = || VfError::BadMac { input: input.to_string() };
        let parts: Vec<&str> = input.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (slot, p) in mac.iter_mut().zip(&parts) {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *slot = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if mac[0] & 1 != 0 {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

/// A VF's administrative link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfLinkState {
    /// Follows the PF's link.
    Auto,
    Enable,
    Disable,
}

impl VfLinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            VfLinkState::Auto => "auto",
            VfLinkState::Enable => "enable",
            VfLinkState::Disable => "disable",
        }
    }

    fn to_nl(self) -> NlLinkState {
        match self {
            VfLinkState::Auto => NlLinkState::Auto,
            VfLinkState::Enable => NlLinkState::Enable,
            VfLinkState::Disable => NlLinkState::Disable,
        }
    }

    fn from_nl(s: NlLinkState) -> Option<Self> {
        match s {
            NlLinkState::Auto => Some(VfLinkState::Auto),
            NlLinkState::Enable => Some(VfLinkState::Enable),
            NlLinkState::Disable => Some(VfLinkState::Disable),
            _ => None,
        }
    }
}

impl FromStr for VfLinkState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VfLinkState::Auto),
            "enable" => Ok(VfLinkState::Enable),
            "disable" => Ok(VfLinkState::Disable),
            _ => Err(format!("'{s}' is not a link state: auto, enable or disable")),
        }
    }
}

/// The changes to make to one VF; None leaves a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VfSettings {
    pub mac: Option<MacAddr>,
    /// VLAN id (0 removes the VLAN) with its 802.1p priority.
    pub vlan: Option<(u16, u8)>,
    pub trust: Option<bool>,
    pub spoofchk: Option<bool>,
    pub link_state: Option<VfLinkState>,
}

impl VfSettings {
    /// Checks ranges the kernel would reject, before anything is sent.
    pub fn validate(&self) -> Result<(), VfError> {
        if let Some((vlan, qos)) = self.vlan {
            if vlan > 4095 {
                return Err(VfError::BadVlan { vlan: vlan.into() });
            }
            if qos > 7 {
                return Err(VfError::BadQos { qos: qos.into() });
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What the PF driver reports about one VF. Settings a driver does not report are None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfStatus {
    pub index: u32,
    pub mac: Option<MacAddr>,
    pub vlan: Option<u16>,
    pub qos: Option<u8>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<VfLinkState>,
}

impl VfStatus {
    fn empty(index: u32) -> Self {
        Self { index, mac: None, vlan: None, qos: None, spoofchk: None, trust: None, link_state: None }
    }
}

/// The netdev of a PF, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfNetdev {
    pub bdf: Bdf,
    pub ifname: String,
    pub ifindex: u32,
    pub num_vfs: u32,
}

impl PciHost {
    /// Resolves a PF given by BDF or interface name to its netdev, checking it is SR-IOV.
    pub fn pf_netdev(&self, spec: &str) -> Result<PfNetdev, VfError> {
        let bdf = self.resolve_device(spec).map_err(|_| VfError::UnknownPf { spec: spec.to_string() })?;
        let info = self.sriov_info(bdf).ok_or(VfError::NotSriov { bdf })?;
        // When the user named an interface, use that one; else the function's first netdev.
        let ifname = if spec.parse::<Bdf>().is_err() {
            spec.to_string()
        } else {
            self.net_interfaces(bdf).into_iter().next().ok_or(VfError::NoInterface { bdf })?
        };
        let idx_path = self.path("sys/class/net").join(&ifname).join("ifindex");
        let ifindex = self
            .read_attr(&idx_path)
            .and_then(|v| v.parse().map_err(|_| io::Error::from(io::ErrorKind::InvalidData)))
            .map_err(|source| VfError::Ifindex { ifname: ifname.clone(), source })?;
        Ok(PfNetdev { bdf, ifname, ifindex, num_vfs: info.num_vfs })
    }
}

const REPLY_TIMEOUT_SECS: libc::time_t = 5;

/// A synchronous rtnetlink connection for VF requests.
pub struct Rtnetlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnetlink {
    pub fn open() -> Result<Self, VfError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(VfError::OpenSocket)?;
        socket.bind_auto().map_err(VfError::OpenSocket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(VfError::OpenSocket)?;
        // A reply that never comes must not hang the tool: bound every receive.
        let tv = libc::timeval { tv_sec: REPLY_TIMEOUT_SECS, tv_usec: 0 };
        // SAFETY: setsockopt on a socket we own, with a pointer to a live timeval and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(VfError::OpenSocket(io::Error::last_os_error()));
        }
        // Replies with per-VF stats of many VFs outgrow a page; the kernel caps one message
        // at 32 KiB unless asked, so 64 KiB holds any single reply.
        Ok(Self { socket, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Sends one request with an ACK asked for; returns the link messages answered before
    /// the ACK. A NACK becomes the kernel's errno.
    fn request(&mut self, msg: RouteNetlinkMessage, ifname: &str, what: &str) -> Result<Vec<LinkMessage>, VfError> {
        let req_err =
            |source: io::Error| VfError::Request { ifname: ifname.to_string(), what: what.to_string(), source };
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(req_err)?;
        let mut links = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0).map_err(req_err)?;
            let mut off = 0;
            while off < n {
                let reply: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&self.buf[off..n])
                    .map_err(|e| VfError::Decode { ifname: ifname.to_string(), reason: e.to_string() })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(VfError::Decode { ifname: ifname.to_string(), reason: "zero-length message".into() });
                }
                off += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(links),
                            Some(_) => Err(req_err(e.to_io())),
                        };
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => links.push(l),
                    NetlinkPayload::Done(_) => return Ok(links),
                    _ => {}
                }
            }
        }
    }

    /// Every VF the PF's driver reports, index order.
    pub fn vf_status(&mut self, pf: &PfNetdev) -> Result<Vec<VfStatus>, VfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = pf.ifindex;
        msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
        let links = self.request(RouteNetlinkMessage::GetLink(msg), &pf.ifname, "reading VF settings")?;
        let mut out = Vec::new();
        for l in links {
            for attr in l.attributes {
                if let LinkAttribute::VfInfoList(list) = attr {
                    out.extend(list.into_iter().enumerate().map(|(i, info)| parse_vf(i as u32, info)));
                }
            }
        }
        out.sort_by_key(|s| s.index);
        Ok(out)
    }

    fn set_one(&mut self, pf: &PfNetdev, info: VfInfo, what: String) -> Result<(), VfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = pf.ifindex;
        msg.attributes.push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![info])]));
        self.request(RouteNetlinkMessage::SetLink(msg), &pf.ifname, &what).map(|_| ())
    }

    /// Applies `settings` to VF `index` of `pf`, one request per setting. Bad input is
    /// refused before anything is sent; if the driver refuses one setting, the settings
    /// already applied are put back to what they were, so a failed call changes nothing.
    pub fn configure_vf(&mut self, pf: &PfNetdev, index: u32, settings: &VfSettings) -> Result<VfStatus, VfError> {
        settings.validate()?;
        if index >= pf.num_vfs {
            return Err(VfError::VfOutOfRange { bdf: pf.bdf, index, num_vfs: pf.num_vfs });
        }
        let before =
            self.vf_status(pf)?.into_iter().find(|s| s.index == index).unwrap_or_else(|| VfStatus::empty(index));
        let steps = steps(index, settings);
        let mut undo: Vec<(VfInfo, String)> = Vec::new();
        for (info, what) in steps {
            if let Err(e) = self.set_one(pf, info.clone(), what) {
                for (u, what) in undo.into_iter().rev() {
                    if let Err(ue) = self.set_one(pf, u, what) {
                        log::error!("{}: undoing VF {index} setting: {ue}", pf.ifname);
                    }
                }
                return Err(e);
            }
            if let Some(u) = undo_step(index, &info, &before) {
                undo.push(u);
            }
        }
        self.vf_status(pf)?.into_iter().find(|s| s.index == index).ok_or(VfError::VfOutOfRange {
            bdf: pf.bdf,
            index,
            num_vfs: pf.num_vfs,
        })
    }
}

fn steps(vf: u32, s: &VfSettings) -> Vec<(VfInfo, String)> {
    let mut v = Vec::new();
    if let Some(mac) = s.mac {
        v.push((VfInfo::Mac(VfInfoMac::new(vf, &mac.0)), format!("setting VF {vf} MAC {mac}")));
    }
    if let Some((vlan, qos)) = s.vlan {
        v.push((
            VfInfo::Vlan(VfInfoVlan::new(vf, vlan.into(), qos.into())),
            format!("setting VF {vf} VLAN {vlan} qos {qos}"),
        ));
    }
    if let Some(on) = s.spoofchk {
        v.push((VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)), format!("setting VF {vf} spoofchk {}", onoff(on))));
    }
    if let Some(on) = s.trust {
        v.push((VfInfo::Trust(VfInfoTrust::new(vf, on)), format!("setting VF {vf} trust {}", onoff(on))));
    }
    if let Some(ls) = s.link_state {
        v.push((
            VfInfo::LinkState(VfInfoLinkState::new(vf, ls.to_nl())),
            format!("setting VF {vf} link-state {}", ls.as_str()),
        ));
    }
    v
}

/// The request that puts back what `applied` changed, from the status read before.
fn undo_step(vf: u32, applied: &VfInfo, before: &VfStatus) -> Option<(VfInfo, String)> {
    let what = format!("restoring VF {vf}");
    let info = match applied {
        VfInfo::Mac(_) => VfInfo::Mac(VfInfoMac::new(vf, &before.mac?.0)),
        VfInfo::Vlan(_) => VfInfo::Vlan(VfInfoVlan::new(vf, before.vlan?.into(), before.qos.unwrap_or(0).into())),
        VfInfo::SpoofCheck(_) => VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, before.spoofchk?)),
        VfInfo::Trust(_) => VfInfo::Trust(VfInfoTrust::new(vf, before.trust?)),
        VfInfo::LinkState(_) => VfInfo::LinkState(VfInfoLinkState::new(vf, before.link_state?.to_nl())),
        _ => return None,
    };
    Some((info, what))
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// One IFLA_VF_INFO nest. The kernel fills each setting with the VF's id; a driver that
/// does not support a setting reports it as -1 / absent.
fn parse_vf(position: u32, info: LinkVfInfo) -> VfStatus {
    let mut s = VfStatus::empty(position);
    for item in info.0 {
        match item {
            VfInfo::Mac(m) => {
                s.index = m.vf_id;
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&m.mac[..6]);
                s.mac = Some(MacAddr(mac));
            }
            VfInfo::Vlan(v) => {
                s.vlan = u16::try_from(v.vlan_id).ok();
                s.qos = u8::try_from(v.qos).ok();
            }
            // The kernel sends u32 -1 when the driver does not fill these; the crate reads -1
            // as false, so such a driver's VFs show "off".
            VfInfo::SpoofCheck(c) => s.spoofchk = Some(c.enabled),
            VfInfo::Trust(t) => s.trust = Some(t.enabled),
            VfInfo::LinkState(l) => s.link_state = VfLinkState::from_nl(l.state),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like};

    #[test]
    fn mac_parsing() {
        assert_eq!("02:00:00:00:00:01".parse::<MacAddr>().unwrap().0, [2, 0, 0, 0, 0, 1]);
        assert_eq!("52-54-00-AB-cd-EF".parse::<MacAddr>().unwrap().to_string(), "52:54:00:ab:cd:ef");
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_ok());
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "02:00:00:00:00:1",
            "02:00:00:00:00:0g",
            "02::00:00:00:00:01",
        ] {
            assert!(matches!(bad.parse::<MacAddr>(), Err(VfError::BadMac { .. })), "{bad}");
        }
    }

    #[test]
    fn settings_ranges() {
        assert!(VfSettings { vlan: Some((4095, 7)), ..Default::default() }.validate().is_ok());
        assert!(matches!(
            VfSettings { vlan: Some((4096, 0)), ..Default::default() }.validate(),
            Err(VfError::BadVlan { .. })
        ));
        assert!(matches!(
            VfSettings { vlan: Some((1, 8)), ..Default::default() }.validate(),
            Err(VfError::BadQos { .. })
        ));
    }

    #[test]
    fn each_setting_is_one_request_and_has_an_undo() {
        let s = VfSettings {
            mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
            vlan: Some((100, 3)),
            trust: Some(true),
            spoofchk: Some(false),
            link_state: Some(VfLinkState::Disable),
        };
        let steps = steps(1, &s);
        assert_eq!(steps.len(), 5);
        let before = VfStatus {
            index: 1,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            vlan: Some(0),
            qos: Some(0),
            spoofchk: Some(true),
            trust: Some(false),
            link_state: Some(VfLinkState::Auto),
        };
        for (info, _) in &steps {
            assert!(undo_step(1, info, &before).is_some());
        }
        match undo_step(1, &steps[0].0, &before).unwrap().0 {
            VfInfo::Mac(m) => assert_eq!(&m.mac[..6], &[2, 0, 0, 0, 0, 1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pf_resolution_refuses_non_sriov_and_unknown() {
        let f = testbed_like(temp_root("vf").unwrap()).unwrap();
        std::fs::write(f.path("sys/class/net/eth0/ifindex"), "2\n").unwrap();
        let h = f.host();
        let pf = h.pf_netdev("0000:01:00.0").unwrap();
        assert_eq!((pf.ifname.as_str(), pf.ifindex, pf.num_vfs), ("eth0", 2, 0));
        assert_eq!(h.pf_netdev("eth0").unwrap(), pf);
        assert!(matches!(h.pf_netdev("0000:02:00.0"), Err(VfError::NotSriov { .. })));
        assert!(matches!(h.pf_netdev("eth7"), Err(VfError::UnknownPf { .. })));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn out_of_range_index_is_refused_before_any_request() {
        let pf = PfNetdev { bdf: Bdf::new(0, 1, 0, 0).unwrap(), ifname: "eth0".into(), ifindex: u32::MAX, num_vfs: 2 };
        // ifindex MAX would make any real request fail differently; the range check comes first.
        let mut nl = match Rtnetlink::open() {
            Ok(nl) => nl,
            // Sandboxes without netlink: the check under test needs no socket traffic anyway.
            Err(e) => panic!("rtnetlink socket: {e}"),
        };
        match nl.configure_vf(&pf, 2, &VfSettings { trust: Some(true), ..Default::default() }) {
            Err(VfError::VfOutOfRange { index: 2, num_vfs: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
