//! Just enough of UEFI device paths to answer one question: does the firmware's console
//! (the `ConOut` variable) already include a serial port?
//!
//! If it does (OVMF with `-serial stdio`, servers with console redirection), the stub's
//! messages reach COM1 through the firmware and are not written there a second time; if it
//! does not (a plain PC with a screen), the stub writes COM1 itself so the serial console
//! still shows the whole boot.

/// Device path node type: messaging.
const MESSAGING: u8 = 0x03;
/// Messaging subtype: UART.
const UART: u8 = 0x0e;
/// Node type: end of path (subtype 0xff) or end of instance (subtype 0x01).
const END: u8 = 0x7f;

/// Whether a (multi-instance) device path contains a UART node. Malformed paths (a node
/// shorter than its 4-byte header or running past the buffer) answer `false`.
pub fn has_uart_node(path: &[u8]) -> bool {
    let mut at = 0usize;
    while let Some(header) = path.get(at..at + 4) {
        let (kind, subtype) = (header[0], header[1]);
        let len = usize::from(u16::from_le_bytes([header[2], header[3]]));
        if len < 4 || at + len > path.len() {
            return false;
        }
        if kind == MESSAGING && subtype == UART {
            return true;
        }
        if kind == END && subtype == 0xff {
            return false;
        }
        at += len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: u8, subtype: u8, body: &[u8]) -> std::vec::Vec<u8> {
        let mut v = std::vec![kind, subtype];
        v.extend_from_slice(&(4 + body.len() as u16).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn finds_a_uart_in_the_second_instance() {
        // PciRoot(0)/Pci(2,0) (a GPU), end of instance, Acpi(PNP0501,0)/Uart(115200,8,N,1)/VenVt100(), end.
        let mut p = node(2, 1, &[0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0]);
        p.extend(node(1, 1, &[0, 2]));
        p.extend(node(END, 0x01, &[]));
        p.extend(node(2, 1, &[0xd0, 0x41, 0x01, 0x05, 0, 0, 0, 0]));
        p.extend(node(MESSAGING, UART, &[0; 15]));
        p.extend(node(MESSAGING, 0x0a, &[0; 16]));
        p.extend(node(END, 0xff, &[]));
        assert!(has_uart_node(&p));
    }

    #[test]
    fn screen_only_and_malformed_paths_have_none() {
        let mut p = node(2, 1, &[0; 8]);
        p.extend(node(1, 1, &[0, 2]));
        p.extend(node(END, 0xff, &[]));
        // A UART after the end node does not count.
        p.extend(node(MESSAGING, UART, &[0; 15]));
        assert!(!has_uart_node(&p));
        assert!(!has_uart_node(&[]));
        assert!(!has_uart_node(&[MESSAGING, UART, 2, 0]));
        assert!(!has_uart_node(&[MESSAGING, UART, 0xff, 0]));
    }
}
