using Vism.Abstractions;
using Vism.Driver;
using Vism.Testing;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// The guest's view of a QEMU virtio-pci (modern) device, driven through qtest: PCI config space via
/// ports 0xcf8/0xcfc, BARs assigned by hand, the virtio capabilities walked, and the common config,
/// notify and device-config structures accessed through MMIO. An <see cref="IDriverTransport"/>, so
/// Core's VirtioDriver and IsmClient drive a real QEMU device model, and QEMU's own start sequence
/// reaches the vhost-user backend. Guest RAM is the <see cref="GuestRam"/> memfd QEMU was given.
/// Shared memory has no host view here: read and write it with <see cref="ShmBase"/> and qtest.
/// </summary>
internal sealed class QtestVirtioPci : IDriverTransport
{
    private const uint Mem32Base = 0xc000_0000;
    private const ulong Mem64Base = 0x1_0000_0000;
    private readonly QtestClient _qt;
    private readonly int _slot;
    private readonly ulong[] _bars = new ulong[6];
    private readonly Dictionary<byte, (ulong Offset, ulong Length)> _shm = [];
    private ulong _common;
    private ulong _notify;
    private uint _notifyMultiplier;
    private ulong _deviceConfig;

    public QtestVirtioPci(QtestClient qt, GuestRam ram, int slot, uint deviceId)
    {
        _qt = qt;
        Ram = ram;
        _slot = slot;
        DeviceId = deviceId;
        uint ids = ConfigRead(0, 4);
        if ((ids & 0xffff) != Virtio.PciVendorId) throw new InvalidOperationException($"no virtio device in slot {slot} (ids 0x{ids:x8})");
        PciDeviceId = (ushort)(ids >> 16);
        AssignBars();
        ConfigWrite(4, 2, ConfigRead(4, 2) | 0x6); // memory space + bus master
        WalkCapabilities();
    }

    public GuestRam Ram { get; }
    public uint DeviceId { get; }
    public ushort PciDeviceId { get; }

    /// <summary>BAR sizes found while assigning them.</summary>
    public ulong[] BarSizes { get; } = new ulong[6];

    /// <summary>Guest-physical address of shared memory region <paramref name="id"/>.</summary>
    public ulong ShmBase(ShmId id) => _bars[4] + _shm[(byte)id].Offset;

    public ulong ReadDeviceFeatures()
    {
        _qt.Write(_common + 0x00, 4, 0);
        ulong lo = _qt.Read(_common + 0x04, 4);
        _qt.Write(_common + 0x00, 4, 1);
        return lo | (_qt.Read(_common + 0x04, 4) << 32);
    }

    public void WriteDriverFeatures(ulong features)
    {
        _qt.Write(_common + 0x08, 4, 0);
        _qt.Write(_common + 0x0c, 4, features & 0xffff_ffff);
        _qt.Write(_common + 0x08, 4, 1);
        _qt.Write(_common + 0x0c, 4, features >> 32);
    }

    public DeviceStatus ReadStatus() => (DeviceStatus)_qt.Read(_common + 0x14, 1);

    public void WriteStatus(DeviceStatus status) => _qt.Write(_common + 0x14, 1, (byte)status);

    public void ReadConfig(uint offset, Span<byte> destination)
    {
        for (int i = 0; i < destination.Length; i++)
            destination[i] = (byte)_qt.Read(_deviceConfig + offset + (ulong)i, 1);
    }

    public uint ReadConfigGeneration() => (uint)_qt.Read(_common + 0x15, 1);

    public ushort MaxQueueSize(int index)
    {
        _qt.Write(_common + 0x16, 2, (ulong)index);
        return (ushort)_qt.Read(_common + 0x18, 2);
    }

    public void StartQueue(int index, QueueSettings settings)
    {
        _qt.Write(_common + 0x16, 2, (ulong)index);
        _qt.Write(_common + 0x18, 2, settings.Size);
        Write64(_common + 0x20, settings.DescriptorTable);
        Write64(_common + 0x28, settings.AvailRing);
        Write64(_common + 0x30, settings.UsedRing);
        _qt.Write(_common + 0x1c, 2, 1);
    }

    public void Kick(int index)
    {
        _qt.Write(_common + 0x16, 2, (ulong)index);
        ulong off = _qt.Read(_common + 0x1e, 2);
        _qt.Write(_notify + off * _notifyMultiplier, 2, (ulong)index);
    }

    /// <summary>No interrupt is seen through qtest: a short sleep, after which the caller re-checks the used ring.</summary>
    public bool WaitQueue(int index, TimeSpan timeout)
    {
        Thread.Sleep(TimeSpan.FromMilliseconds(Math.Min(2, timeout.TotalMilliseconds)));
        return false;
    }

    public ulong ShmLength(ShmId id) => _shm.TryGetValue((byte)id, out var s) ? s.Length : 0;

    public nint ShmAddress(ShmId id) => 0;

    public void WriteNotify(ulong offset, byte value = 1) => _qt.Write(ShmBase(ShmId.Notify) + offset, 1, value);

    public int VectorCount => 0;

    public bool WaitVector(int vector, TimeSpan timeout) => false;

    public void Dispose()
    {
    }

    private void Write64(ulong address, ulong value)
    {
        _qt.Write(address, 4, value & 0xffff_ffff);
        _qt.Write(address + 4, 4, value >> 32);
    }

    private void AssignBars()
    {
        uint mem32 = Mem32Base;
        ulong mem64 = Mem64Base;
        for (int i = 0; i < 6; i++)
        {
            int reg = 0x10 + 4 * i;
            uint original = ConfigRead(reg, 4);
            if ((original & 1) != 0) continue; // I/O BAR: not used
            bool is64 = ((original >> 1) & 3) == 2;
            ConfigWrite(reg, 4, 0xffff_ffff);
            ulong mask = ConfigRead(reg, 4) & 0xffff_fff0UL;
            if (is64)
            {
                ConfigWrite(reg + 4, 4, 0xffff_ffff);
                mask |= (ulong)ConfigRead(reg + 4, 4) << 32;
            }
            else
            {
                mask |= 0xffff_ffff_0000_0000;
            }
            if (mask == 0 || mask == 0xffff_ffff_0000_0000)
            {
                ConfigWrite(reg, 4, original);
                if (is64) i++;
                continue;
            }
            ulong size = ~mask + 1;
            ulong address;
            if (is64)
            {
                mem64 = (mem64 + size - 1) & ~(size - 1);
                address = mem64;
                mem64 += size;
                ConfigWrite(reg, 4, (uint)address);
                ConfigWrite(reg + 4, 4, (uint)(address >> 32));
            }
            else
            {
                mem32 = (uint)(((ulong)mem32 + size - 1) & ~(size - 1));
                address = mem32;
                mem32 += (uint)size;
                ConfigWrite(reg, 4, (uint)address);
            }
            _bars[i] = address;
            BarSizes[i] = size;
            if (is64) i++;
        }
    }

    private void WalkCapabilities()
    {
        int at = (int)ConfigRead(0x34, 1) & 0xfc;
        for (int guard = 0; at != 0 && guard < 48; guard++)
        {
            uint id = ConfigRead(at, 1);
            int next = (int)ConfigRead(at + 1, 1) & 0xfc;
            if (id == 0x09)
            {
                uint type = ConfigRead(at + 3, 1);
                int bar = (int)ConfigRead(at + 4, 1);
                byte shmId = (byte)ConfigRead(at + 5, 1);
                ulong offset = ConfigRead(at + 8, 4);
                ulong length = ConfigRead(at + 12, 4);
                switch (type)
                {
                    case 1: _common = _bars[bar] + offset; break;
                    case 2:
                        _notify = _bars[bar] + offset;
                        _notifyMultiplier = ConfigRead(at + 16, 4);
                        break;
                    case 4: _deviceConfig = _bars[bar] + offset; break;
                    case 8:
                        offset |= (ulong)ConfigRead(at + 16, 4) << 32;
                        length |= (ulong)ConfigRead(at + 20, 4) << 32;
                        _shm[shmId] = (offset, length);
                        break;
                }
            }
            at = next;
        }
        if (_common == 0 || _notify == 0 || _deviceConfig == 0)
            throw new InvalidOperationException("the device lacks a virtio common, notify or device config capability");
    }

    private uint Address(int reg) => 0x8000_0000u | ((uint)_slot << 11) | ((uint)reg & 0xfc);

    private uint ConfigRead(int reg, int width)
    {
        _qt.Out(0xcf8, Address(reg), 4);
        return _qt.In((ushort)(0xcfc + (reg & 3)), width);
    }

    private void ConfigWrite(int reg, int width, uint value)
    {
        _qt.Out(0xcf8, Address(reg), 4);
        _qt.Out((ushort)(0xcfc + (reg & 3)), value, width);
    }
}
