using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Mmio;

namespace Vism.Transport.Mmio;

/// <summary>How the register window answered one access.</summary>
public enum MmioAccessResult : byte
{
    /// <summary>The access was valid and took effect.</summary>
    Ok = 0,

    /// <summary>No register at this offset (or past the end of the configuration space): a read
    /// returns 0, a write is ignored.</summary>
    Undefined = 1,

    /// <summary>Wrong width or alignment (control registers take aligned 32-bit accesses only; the
    /// configuration space aligned 8, 16 or 32-bit ones): a read returns 0, a write is ignored.</summary>
    BadWidth = 2,

    /// <summary>A read of a write-only register or a write of a read-only one: a read returns 0, a
    /// write is ignored.</summary>
    WrongDirection = 3,

    /// <summary>A write to a defined register that the device or its state refused (for example a
    /// status transition out of order, a queue register while the queue is ready): ignored.</summary>
    Refused = 4,
}

/// <summary>
/// The virtio-mmio version 2 register window (virtio 1.x 4.2.2) over an <see cref="IVirtioDevice"/>,
/// as a pure state machine: every register, the interrupt status bits, per-queue staging of the
/// ring layout (handed to <see cref="IVirtioDevice.TryStartQueue"/> when QueueReady becomes 1) and
/// the shared-memory registers. It owns no thread and no descriptor; call it only on the device's
/// loop. Bad accesses never throw: they are answered as the specification requires (reads 0,
/// writes ignored), logged and counted (<c>mmio.access.*</c>, <c>mmio.write.refused</c>).
/// </summary>
public sealed class MmioRegisters
{
    private readonly IVirtioDevice _device;
    private readonly Action _raiseInterrupt;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private readonly Dictionary<ShmId, ulong> _shmBase = [];
    private QueueRegisters[] _queues = [];
    private uint _deviceFeaturesSel;
    private uint _driverFeaturesSel;
    private ulong _driverFeatures;
    private uint _queueSel;
    private uint _shmSel;
    private uint _interruptStatus;

    /// <param name="device">The device behind the window.</param>
    /// <param name="raiseInterrupt">Asserts the device's interrupt line (called after a bit of
    /// InterruptStatus was set).</param>
    /// <param name="counters">The device's counters.</param>
    /// <param name="log">Where refused accesses are reported.</param>
    public MmioRegisters(IVirtioDevice device, Action raiseInterrupt, IDeviceCounters counters, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(raiseInterrupt);
        ArgumentNullException.ThrowIfNull(counters);
        ArgumentNullException.ThrowIfNull(log);
        _device = device;
        _raiseInterrupt = raiseInterrupt;
        _counters = counters;
        _log = log;
        ClearTransportState();
    }

    /// <summary>Size of the register window in bytes: the control registers, then the configuration
    /// space, rounded up to 0x100 and at least 0x200 (the size Linux device trees usually give).</summary>
    public uint WindowSize => Math.Max(0x200u, (MmioRegister.Config + (uint)_device.ConfigSize + 0xffu) & ~0xffu);

    /// <summary>The current InterruptStatus bits.</summary>
    public uint InterruptStatus => _interruptStatus;

    /// <summary>Called after the driver reset the device (a Status write of 0) and the transport
    /// state was cleared; the owner drops what it mapped for the driver.</summary>
    public Action? DeviceReset { get; set; }

    /// <summary>Reads <paramref name="width"/> bytes at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset in the window.</param>
    /// <param name="width">Access width in bytes.</param>
    /// <param name="value">The value (zero-extended); 0 unless the access is valid.</param>
    /// <returns>How the access was answered.</returns>
    public MmioAccessResult Read(uint offset, int width, out uint value)
    {
        value = 0;
        if (offset >= MmioRegister.Config)
            return ReadConfig(offset, width, out value);
        if (width != 4 || (offset & 3) != 0)
            return Reject(MmioAccessResult.BadWidth, "read", offset, width, 0, "control registers take aligned 32-bit accesses");
        switch (offset)
        {
            case MmioRegister.MagicValue: value = MmioRegister.Magic; break;
            case MmioRegister.Version: value = MmioRegister.CurrentVersion; break;
            case MmioRegister.DeviceId: value = _device.DeviceId; break;
            case MmioRegister.VendorId: value = Virtio.MmioVendorId; break;
            case MmioRegister.DeviceFeatures:
                value = _deviceFeaturesSel switch
                {
                    0 => (uint)_device.DeviceFeatures,
                    1 => (uint)(_device.DeviceFeatures >> 32),
                    _ => 0,
                };
                break;
            case MmioRegister.QueueNumMax: value = SelectedQueueExists ? _device.MaxQueueSize : 0u; break;
            case MmioRegister.QueueReady: value = SelectedQueueExists && _queues[_queueSel].Ready ? 1u : 0u; break;
            case MmioRegister.QueueReset: value = 0; break; // a queue reset completes within the write
            case MmioRegister.InterruptStatus: value = _interruptStatus; break;
            case MmioRegister.Status: value = (uint)_device.Status; break;
            case MmioRegister.ShmLenLow: value = (uint)SelectedShmLength; break;
            case MmioRegister.ShmLenHigh: value = (uint)(SelectedShmLength >> 32); break;
            case MmioRegister.ShmBaseLow: value = (uint)SelectedShmBase; break;
            case MmioRegister.ShmBaseHigh: value = (uint)(SelectedShmBase >> 32); break;
            case MmioRegister.ConfigGeneration: value = _device.ConfigGeneration; break;
            case MmioRegister.DeviceFeaturesSel or MmioRegister.DriverFeatures or MmioRegister.DriverFeaturesSel
                or MmioRegister.QueueSel or MmioRegister.QueueNum or MmioRegister.QueueNotify or MmioRegister.InterruptAck
                or MmioRegister.QueueDescLow or MmioRegister.QueueDescHigh or MmioRegister.QueueDriverLow
                or MmioRegister.QueueDriverHigh or MmioRegister.QueueDeviceLow or MmioRegister.QueueDeviceHigh
                or MmioRegister.ShmSel:
                return Reject(MmioAccessResult.WrongDirection, "read", offset, width, 0, "the register is write-only");
            default:
                return Reject(MmioAccessResult.Undefined, "read", offset, width, 0, "no register at this offset");
        }
        return MmioAccessResult.Ok;
    }

    /// <summary>Writes the low <paramref name="width"/> bytes of <paramref name="value"/> at <paramref name="offset"/>.</summary>
    /// <param name="offset">Byte offset in the window.</param>
    /// <param name="width">Access width in bytes.</param>
    /// <param name="value">The value.</param>
    /// <returns>How the access was answered; anything but <see cref="MmioAccessResult.Ok"/> had no effect.</returns>
    public MmioAccessResult Write(uint offset, int width, uint value)
    {
        if (offset >= MmioRegister.Config)
            return WriteConfig(offset, width, value);
        if (width != 4 || (offset & 3) != 0)
            return Reject(MmioAccessResult.BadWidth, "write", offset, width, value, "control registers take aligned 32-bit accesses");
        switch (offset)
        {
            case MmioRegister.DeviceFeaturesSel: _deviceFeaturesSel = value; return MmioAccessResult.Ok;
            case MmioRegister.DriverFeaturesSel: _driverFeaturesSel = value; return MmioAccessResult.Ok;
            case MmioRegister.DriverFeatures: return WriteDriverFeatures(value);
            case MmioRegister.QueueSel: _queueSel = value; return MmioAccessResult.Ok;
            case MmioRegister.QueueNum or MmioRegister.QueueDescLow or MmioRegister.QueueDescHigh
                or MmioRegister.QueueDriverLow or MmioRegister.QueueDriverHigh
                or MmioRegister.QueueDeviceLow or MmioRegister.QueueDeviceHigh:
                return WriteQueueField(offset, value);
            case MmioRegister.QueueReady: return WriteQueueReady(value);
            case MmioRegister.QueueReset: return WriteQueueReset(value);
            case MmioRegister.QueueNotify: return WriteQueueNotify(value);
            case MmioRegister.InterruptAck: _interruptStatus &= ~value; return MmioAccessResult.Ok;
            case MmioRegister.Status: return WriteStatus(value);
            case MmioRegister.ShmSel: _shmSel = value; return MmioAccessResult.Ok;
            case MmioRegister.MagicValue or MmioRegister.Version or MmioRegister.DeviceId or MmioRegister.VendorId
                or MmioRegister.DeviceFeatures or MmioRegister.QueueNumMax or MmioRegister.InterruptStatus
                or MmioRegister.ShmLenLow or MmioRegister.ShmLenHigh or MmioRegister.ShmBaseLow or MmioRegister.ShmBaseHigh
                or MmioRegister.ConfigGeneration:
                return Reject(MmioAccessResult.WrongDirection, "write", offset, width, value, "the register is read-only");
            default:
                return Reject(MmioAccessResult.Undefined, "write", offset, width, value, "no register at this offset");
        }
    }

    /// <summary>A trapped write into the NOTIFY window: routed to <see cref="IVirtioDevice.NotifyWrite"/>.
    /// The value is ignored (v1: any write to a region's slot signals an update).</summary>
    /// <param name="offset">Byte offset inside the NOTIFY window.</param>
    /// <param name="width">Access width: 1, 2, 4 or 8 bytes.</param>
    /// <returns><see cref="MmioAccessResult.Undefined"/> outside the window, <see cref="MmioAccessResult.BadWidth"/> for another width.</returns>
    public MmioAccessResult WriteNotifyWindow(ulong offset, int width)
    {
        ulong length = ShmLength(ShmId.Notify);
        if (width is not (1 or 2 or 4 or 8))
            return RejectNotify(MmioAccessResult.BadWidth, offset, width, "notify writes are 1, 2, 4 or 8 bytes wide");
        if (length == MmioRegister.NoSharedMemory || offset > length || (ulong)width > length - offset)
            return RejectNotify(MmioAccessResult.Undefined, offset, width, $"outside the {length}-byte NOTIFY window");
        _device.NotifyWrite(offset);
        return MmioAccessResult.Ok;
    }

    /// <summary>Sets InterruptStatus bit 0 (used buffer) and asserts the interrupt line.</summary>
    public void SignalUsedBuffer()
    {
        _interruptStatus |= MmioRegister.InterruptUsedBuffer;
        _raiseInterrupt();
    }

    /// <summary>Sets InterruptStatus bit 1 (configuration change) and asserts the interrupt line.</summary>
    public void SignalConfigChange()
    {
        _interruptStatus |= MmioRegister.InterruptConfigChange;
        _raiseInterrupt();
    }

    /// <summary>Records where the VMM placed shared-memory window <paramref name="id"/> in
    /// guest-physical space (read back through SHMBaseLow/High). Until then the base reads 0.</summary>
    /// <param name="id">The window.</param>
    /// <param name="guestPhysical">Its guest-physical base.</param>
    /// <returns>False when the device has no such window or the window would wrap past 2^64.</returns>
    public bool SetShmBase(ShmId id, ulong guestPhysical)
    {
        ulong length = ShmLength(id);
        if (length == MmioRegister.NoSharedMemory || length == 0 || length > ulong.MaxValue - guestPhysical)
            return false;
        _shmBase[id] = guestPhysical;
        return true;
    }

    /// <summary>Length of the device's window <paramref name="id"/>, or <see cref="MmioRegister.NoSharedMemory"/>.</summary>
    /// <param name="id">The window.</param>
    public ulong ShmLength(ShmId id)
    {
        foreach (SharedMemoryWindow w in _device.SharedMemory)
            if (w.Id == id) return w.Length;
        return MmioRegister.NoSharedMemory;
    }

    /// <summary>Forgets everything a driver or VMM set (selectors, staged queues, interrupt bits,
    /// window bases): the state of a freshly connected window. The device itself is not touched.</summary>
    public void ClearTransportState()
    {
        ClearDriverState();
        _shmBase.Clear();
    }

    private void ClearDriverState()
    {
        _deviceFeaturesSel = 0;
        _driverFeaturesSel = 0;
        _driverFeatures = 0;
        _queueSel = 0;
        _shmSel = 0;
        _interruptStatus = 0;
        int count = Math.Max(0, _device.QueueCount);
        if (_queues.Length != count) _queues = new QueueRegisters[count];
        for (int i = 0; i < _queues.Length; i++) _queues[i] = QueueRegisters.Initial(_device.MaxQueueSize);
    }

    private bool SelectedQueueExists => _queueSel < (uint)_queues.Length;

    private ulong SelectedShmLength => _shmSel <= byte.MaxValue ? ShmLength((ShmId)_shmSel) : MmioRegister.NoSharedMemory;

    private ulong SelectedShmBase
    {
        get
        {
            if (SelectedShmLength == MmioRegister.NoSharedMemory) return MmioRegister.NoSharedMemory;
            return _shmBase.TryGetValue((ShmId)_shmSel, out ulong b) ? b : 0;
        }
    }

    private MmioAccessResult ReadConfig(uint offset, int width, out uint value)
    {
        value = 0;
        uint rel = offset - MmioRegister.Config;
        if (!ConfigWidthOk(rel, width))
            return Reject(MmioAccessResult.BadWidth, "read", offset, width, 0, "configuration space takes aligned 8, 16 or 32-bit accesses");
        Span<byte> bytes = stackalloc byte[4];
        if (!ConfigInRange(rel, width) || !_device.TryReadConfig(rel, bytes[..width]))
            return Reject(MmioAccessResult.Undefined, "read", offset, width, 0, $"outside the {_device.ConfigSize}-byte configuration space");
        value = width switch
        {
            1 => bytes[0],
            2 => System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(bytes),
            _ => System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(bytes),
        };
        return MmioAccessResult.Ok;
    }

    private MmioAccessResult WriteConfig(uint offset, int width, uint value)
    {
        uint rel = offset - MmioRegister.Config;
        if (!ConfigWidthOk(rel, width))
            return Reject(MmioAccessResult.BadWidth, "write", offset, width, value, "configuration space takes aligned 8, 16 or 32-bit accesses");
        if (!ConfigInRange(rel, width))
            return Reject(MmioAccessResult.Undefined, "write", offset, width, value, $"outside the {_device.ConfigSize}-byte configuration space");
        Span<byte> bytes = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
        return _device.TryWriteConfig(rel, bytes[..width])
            ? MmioAccessResult.Ok
            : Reject(MmioAccessResult.Refused, "write", offset, width, value, "the device refused the configuration write");
    }

    private static bool ConfigWidthOk(uint rel, int width) => width switch
    {
        1 => true,
        2 => (rel & 1) == 0,
        4 => (rel & 3) == 0,
        _ => false,
    };

    private bool ConfigInRange(uint rel, int width)
    {
        uint size = (uint)Math.Max(0, _device.ConfigSize);
        return rel <= size && (uint)width <= size - rel;
    }

    private MmioAccessResult WriteDriverFeatures(uint value)
    {
        ulong features;
        switch (_driverFeaturesSel)
        {
            case 0: features = (_driverFeatures & 0xffff_ffff_0000_0000UL) | value; break;
            case 1: features = (_driverFeatures & 0xffff_ffffUL) | ((ulong)value << 32); break;
            default:
                return value == 0 ? MmioAccessResult.Ok
                    : Reject(MmioAccessResult.Refused, "write", MmioRegister.DriverFeatures, 4, value,
                        $"DriverFeaturesSel {_driverFeaturesSel} selects no feature bits");
        }
        if (!_device.TrySetDriverFeatures(features))
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.DriverFeatures, 4, value,
                $"the device refused driver features 0x{features:x} in status {_device.Status}");
        _driverFeatures = features;
        return MmioAccessResult.Ok;
    }

    private MmioAccessResult WriteQueueField(uint offset, uint value)
    {
        if (!SelectedQueueExists)
            return Reject(MmioAccessResult.Refused, "write", offset, 4, value, $"QueueSel {_queueSel} selects no queue (the device has {_queues.Length})");
        ref QueueRegisters q = ref _queues[_queueSel];
        if (q.Ready)
            return Reject(MmioAccessResult.Refused, "write", offset, 4, value, $"queue {_queueSel} is ready; write 0 to QueueReady (or reset it) first");
        switch (offset)
        {
            case MmioRegister.QueueNum: q.Num = value; break;
            case MmioRegister.QueueDescLow: q.Desc = Low(q.Desc, value); break;
            case MmioRegister.QueueDescHigh: q.Desc = High(q.Desc, value); break;
            case MmioRegister.QueueDriverLow: q.Driver = Low(q.Driver, value); break;
            case MmioRegister.QueueDriverHigh: q.Driver = High(q.Driver, value); break;
            case MmioRegister.QueueDeviceLow: q.Device = Low(q.Device, value); break;
            default: q.Device = High(q.Device, value); break;
        }
        return MmioAccessResult.Ok;
    }

    private MmioAccessResult WriteQueueReady(uint value)
    {
        if (!SelectedQueueExists)
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReady, 4, value, $"QueueSel {_queueSel} selects no queue (the device has {_queues.Length})");
        int index = (int)_queueSel;
        ref QueueRegisters q = ref _queues[index];
        switch (value)
        {
            case 0:
                if (q.Ready)
                {
                    _device.StopQueue(index);
                    q.Ready = false;
                }
                return MmioAccessResult.Ok;
            case 1:
                if (q.Ready) return MmioAccessResult.Ok;
                DeviceStatus status = _device.Status;
                if (!status.HasFlag(DeviceStatus.FeaturesOk) || (status & (DeviceStatus.Failed | DeviceStatus.DeviceNeedsReset)) != 0)
                    return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReady, 4, value,
                        $"queue {index} cannot start in status {status} (needs FEATURES_OK, no FAILED or DEVICE_NEEDS_RESET)");
                if (q.Num == 0 || q.Num > ushort.MaxValue)
                    return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReady, 4, value,
                        $"queue {index} size {q.Num} is out of range (1..{_device.MaxQueueSize})");
                var settings = new QueueSettings((ushort)q.Num, q.Desc, q.Driver, q.Device);
                if (!_device.TryStartQueue(index, settings))
                    return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReady, 4, value,
                        $"the device refused queue {index}: size {q.Num}, desc 0x{q.Desc:x}, driver 0x{q.Driver:x}, device 0x{q.Device:x}");
                q.Ready = true;
                return MmioAccessResult.Ok;
            default:
                return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReady, 4, value, "QueueReady takes 0 or 1");
        }
    }

    private MmioAccessResult WriteQueueReset(uint value)
    {
        if (value == 0) return MmioAccessResult.Ok;
        if (!SelectedQueueExists)
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReset, 4, value, $"QueueSel {_queueSel} selects no queue (the device has {_queues.Length})");
        if (value != 1)
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReset, 4, value, "QueueReset takes 1");
        if (!_device.Status.HasFlag(DeviceStatus.FeaturesOk) || !Features.Has(_device.DriverFeatures, Features.RingReset))
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueReset, 4, value, "VIRTIO_F_RING_RESET was not negotiated");
        int index = (int)_queueSel;
        if (_queues[index].Ready) _device.StopQueue(index);
        _queues[index] = QueueRegisters.Initial(_device.MaxQueueSize);
        return MmioAccessResult.Ok;
    }

    private MmioAccessResult WriteQueueNotify(uint value)
    {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index; with it the index is the low 16 bits.
        uint index = value & 0xffff;
        if (index >= (uint)_queues.Length || !_queues[index].Ready)
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.QueueNotify, 4, value, $"queue {index} is not ready");
        _device.NotifyQueue((int)index);
        return MmioAccessResult.Ok;
    }

    private MmioAccessResult WriteStatus(uint value)
    {
        if (value == 0)
        {
            _device.Reset();
            ClearDriverState();
            DeviceReset?.Invoke();
            return MmioAccessResult.Ok;
        }
        if (value > byte.MaxValue)
            return Reject(MmioAccessResult.Refused, "write", MmioRegister.Status, 4, value, "status is an 8-bit value");
        DeviceStatus before = _device.Status;
        return _device.TrySetStatus((DeviceStatus)value)
            ? MmioAccessResult.Ok
            : Reject(MmioAccessResult.Refused, "write", MmioRegister.Status, 4, value, $"the device refused status {(DeviceStatus)value} after {before}");
    }

    private static ulong Low(ulong old, uint value) => (old & 0xffff_ffff_0000_0000UL) | value;

    private static ulong High(ulong old, uint value) => (old & 0xffff_ffffUL) | ((ulong)value << 32);

    private MmioAccessResult Reject(MmioAccessResult result, string kind, uint offset, int width, uint value, string reason)
    {
        RateLimitedLog.Count(_counters, _log, LogLevel.Warning, CounterName(result),
            "{Device}: mmio {Kind} of {Register} (offset 0x{Offset:x}, {Width} bytes, value 0x{Value:x}) {Result}: {Reason}",
            _device.Description.Name, kind, MmioRegister.Name(offset), offset, width, value, result, reason);
        return result;
    }

    private MmioAccessResult RejectNotify(MmioAccessResult result, ulong offset, int width, string reason)
    {
        RateLimitedLog.Count(_counters, _log, LogLevel.Warning, "mmio.notify.rejected", "{Device}: notify write at 0x{Offset:x} ({Width} bytes) {Result}: {Reason}",
            _device.Description.Name, offset, width, result, reason);
        return result;
    }

    /// <summary>The counter a rejected access increments.</summary>
    /// <param name="result">A result other than <see cref="MmioAccessResult.Ok"/>.</param>
    public static string CounterName(MmioAccessResult result) => result switch
    {
        MmioAccessResult.Undefined => "mmio.access.undefined",
        MmioAccessResult.BadWidth => "mmio.access.width",
        MmioAccessResult.WrongDirection => "mmio.access.direction",
        MmioAccessResult.Refused => "mmio.write.refused",
        _ => "mmio.access.ok",
    };

    private struct QueueRegisters
    {
        public uint Num;
        public ulong Desc;
        public ulong Driver;
        public ulong Device;
        public bool Ready;

        public static QueueRegisters Initial(ushort maxSize) => new() { Num = maxSize };
    }
}
