/** A hostile VT-d guest's forged commands: page group responses (command-forger.ts); no stalls. */
import {
  encodeVtdPageGroupResponse,
  newVtdPageGroupResponse,
  QI_RESP_INVALID,
  QI_RESP_RESERVED,
  QI_RESP_SUCCESS,
} from '../shared/records/vtd-prq-entry.ts';
import type { RingProducer } from '../shared/ring.ts';
import { type CommandForger, commitIfRoom } from './command-forger.ts';

export class VtdForger implements CommandForger {
  private readonly response = newVtdPageGroupResponse();

  constructor(private readonly iq: RingProducer) {}

  group(rid: number, pasid: number, prgIndex: number, success: boolean): boolean {
    return this.groupResponse(rid, pasid, prgIndex, success ? QI_RESP_SUCCESS : QI_RESP_INVALID);
  }

  resume(): boolean {
    return false;
  }

  illegal(rid: number, prgIndex: number): boolean {
    return this.groupResponse(rid, -1, prgIndex, QI_RESP_RESERVED);
  }

  private groupResponse(rid: number, pasid: number, prgIndex: number, code: number): boolean {
    const p = this.response;
    p.rid = rid;
    p.pasidPresent = pasid >= 0;
    p.pasid = Math.max(pasid, 0);
    p.prgIndex = prgIndex;
    p.lpig = true;
    p.code = code;
    return commitIfRoom(this.iq, encodeVtdPageGroupResponse, p);
  }
}
