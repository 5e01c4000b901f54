//! Contents of the fw_cfg items firmware reads: the memory map (`etc/e820`), the boot order
//! (`bootorder`, OpenFirmware device paths as QEMU writes them) and little-endian numbers.

/// E820 memory types (ACPI 6.5, 15.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub len: u64,
    pub kind: E820Type,
}

/// `etc/e820`: packed little-endian `{ u64 address; u64 length; u32 type; }` records. SeaBIOS
/// and OVMF size RAM from its RAM entries and add their own reservations (BIOS area,
/// ECAM) on top.
pub fn e820_blob(entries: &[E820Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 20);
    for e in entries {
        out.extend_from_slice(&e.addr.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&(e.kind as u32).to_le_bytes());
    }
    out
}

/// One node of a PCI OpenFirmware path: `name@slot[,function]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfwPciNode {
    pub name: &'static str,
    pub slot: u8,
    pub function: u8,
}

impl OfwPciNode {
    /// The node for a function of PCI class `class_code` (24 bits), named as QEMU names them
    /// in boot paths: bridges are `pci-bridge` (SeaBIOS matches bridges by that name);
    /// endpoints get a class name OVMF recognises.
    pub fn for_class(class_code: u32, slot: u8, function: u8) -> Self {
        let name = match class_code >> 8 {
            0x0604 => "pci-bridge",
            0x0100 => "scsi",
            0x0101 => "ide",
            0x0106 => "sata",
            0x0108 => "nvme",
            0x0200 => "ethernet",
            0x0300 => "display",
            _ => "pci",
        };
        Self { name, slot, function }
    }
}

/// A boot device as a path firmware understands: the PCI nodes from the root bus down
/// (bridges first), then `tail` (for instance `disk@0,0` for a virtio-blk disk,
/// `namespace@1,0` for the first NVMe namespace).
pub fn ofw_pci_path(nodes: &[OfwPciNode], tail: &str) -> String {
    let mut p = String::from("/pci@i0cf8");
    for n in nodes {
        p.push_str(&format!("/{}@{:x}", n.name, n.slot));
        if n.function != 0 {
            p.push_str(&format!(",{:x}", n.function));
        }
    }
    if !tail.is_empty() {
        p.push('/');
        p.push_str(tail);
    }
    p
}

/// The boot option ROM a kernel given with `-kernel` boots from under SeaBIOS.
pub fn ofw_rom_path(file: &str) -> String {
    format!("/rom@{file}")
}

/// `bootorder`: one path per line, most preferred first, NUL-terminated.
pub fn bootorder_blob(paths: &[String]) -> Vec<u8> {
    let mut out = paths.join("\n").into_bytes();
    out.push(0);
    out
}

pub fn le16(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_records_are_20_bytes() {
        let b = e820_blob(&[
            E820Entry { addr: 0, len: 0x8000_0000, kind: E820Type::Ram },
            E820Entry { addr: 1 << 32, len: 1 << 30, kind: E820Type::Ram },
            E820Entry { addr: 0xfeff_c000, len: 0x4000, kind: E820Type::Reserved },
        ]);
        assert_eq!(b.len(), 60);
        assert_eq!(&b[8..16], &0x8000_0000u64.to_le_bytes());
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
        assert_eq!(&b[40..48], &0xfeff_c000u64.to_le_bytes());
        assert_eq!(&b[56..60], &2u32.to_le_bytes());
    }

    #[test]
    fn paths_as_qemu_writes_them() {
        let port = OfwPciNode::for_class(0x060400, 1, 0);
        let nvme = OfwPciNode::for_class(0x010802, 0, 0);
        assert_eq!(ofw_pci_path(&[port, nvme], "namespace@1,0"), "/pci@i0cf8/pci-bridge@1/nvme@0/namespace@1,0");
        let blk = OfwPciNode::for_class(0x010000, 0x1a, 3);
        assert_eq!(ofw_pci_path(&[blk], "disk@0,0"), "/pci@i0cf8/scsi@1a,3/disk@0,0");
        assert_eq!(ofw_pci_path(&[OfwPciNode::for_class(0xff0000, 2, 0)], ""), "/pci@i0cf8/pci@2");
        assert_eq!(ofw_rom_path("genroms/linuxboot_dma.bin"), "/rom@genroms/linuxboot_dma.bin");
        assert_eq!(bootorder_blob(&["/a".into(), "/b".into()]), b"/a\n/b\0");
    }
}
