/**
 * The MTU of an encrypted overlay: VXLAN's encapsulation plus ESP's, so that
 * a full-size inner frame still fits the underlay MTU and nothing fragments.
 *
 * VXLAN over IPv4 (what the unencrypted overlay subtracts, 50 bytes):
 *     outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
 * ESP in transport mode with rfc4106(gcm(aes)) wraps the outer UDP datagram:
 *     ESP header 8 (SPI 4 + sequence 4)  -- the ESN high half is not sent
 *     IV 8 (GCM's explicit per-packet IV)
 *     payload = UDP 8 + VXLAN 8 + Ethernet 14 + inner packet
 *     padding 0..3 + pad length 1 + next header 1, so that
 *       payload + padding + 2 is a multiple of 4 (esp_output_head aligns to
 *       max(cipher block, 4); GCM's block is 1)
 *     ICV 16 (128-bit tag)
 *
 * So the largest payload is: floor4(underlay - IP - 8 - 8 - 16) - 2, and the
 * inner MTU is that minus UDP, VXLAN and Ethernet (30). For a 1500-byte IPv4
 * underlay: floor4(1500 - 20 - 32) - 2 - 30 = 1448 - 2 - 30 = 1416.
 *
 * Docker uses 1450 - 26 = 1424 (its ESP estimate is 26 bytes): a 1424-byte
 * inner packet becomes 20 + 8 + 8 + (1454 + 2) + 16 = 1508 bytes on the
 * wire, 8 more than a 1500 underlay carries, so Docker's full-size frames
 * fragment. 1416 is the largest inner MTU that never does.
 */

export const IPV4_HEADER = 20;
export const IPV6_HEADER = 40;
export const UDP_HEADER = 8;
export const VXLAN_HEADER = 8;
export const ETHERNET_HEADER = 14;
/** What the unencrypted overlay subtracts over IPv4: 50. */
export const VXLAN_OVERHEAD_V4 = IPV4_HEADER + UDP_HEADER + VXLAN_HEADER + ETHERNET_HEADER;

export const ESP_HEADER = 8;
export const ESP_GCM_IV = 8;
export const ESP_GCM_ICV = 16;
/** pad length + next header */
export const ESP_TRAILER = 2;
/** ESP pads payload + trailer to this */
export const ESP_ALIGN = 4;
/** The worst case ESP adds: header + IV + ICV + trailer + 3 bytes of padding = 37. */
export const ESP_MAX_OVERHEAD = ESP_HEADER + ESP_GCM_IV + ESP_GCM_ICV + ESP_TRAILER + (ESP_ALIGN - 1);

/** Docker's encrypted overlay MTU on a 1500 underlay, for comparison: 1450 - 26 rounded down to 4. */
export const DOCKER_ENCRYPTED_MTU_1500 = Math.floor((1500 - VXLAN_OVERHEAD_V4 - 26) / 4) * 4;

export interface EncryptedMtu {
  /** the MTU to give the overlay's interfaces */
  mtu: number;
  /** what the unencrypted overlay would use */
  unencrypted: number;
  /** how many bytes encryption costs over the unencrypted MTU */
  espCost: number;
}

/** ESP's bytes on top of a payload (the outer UDP datagram) of `payload` bytes. */
export function espOverhead(payload: number): number {
  const padded = Math.ceil((payload + ESP_TRAILER) / ESP_ALIGN) * ESP_ALIGN;
  return ESP_HEADER + ESP_GCM_IV + (padded - payload) + ESP_GCM_ICV;
}

/** The overlay MTU for an underlay MTU, with or without encryption (see the header for the arithmetic). */
export function encryptedMtu(underlayMtu: number, underlayFamily: 4 | 6 = 4): EncryptedMtu {
  const outerIp = underlayFamily === 6 ? IPV6_HEADER : IPV4_HEADER;
  const innerEncap = UDP_HEADER + VXLAN_HEADER + ETHERNET_HEADER; // 30: inside the ESP payload
  const unencrypted = underlayMtu - outerIp - innerEncap;
  const room = underlayMtu - outerIp - ESP_HEADER - ESP_GCM_IV - ESP_GCM_ICV; // payload + padding + trailer
  const payload = Math.floor(room / ESP_ALIGN) * ESP_ALIGN - ESP_TRAILER;
  const mtu = payload - innerEncap;
  if (mtu < 68) throw new RangeError(`underlay MTU ${underlayMtu} leaves ${mtu} bytes for an encrypted overlay (IPv4 needs 68)`);
  return { mtu, unencrypted, espCost: unencrypted - mtu };
}
