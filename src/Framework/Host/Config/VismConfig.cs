using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Host.Plugins;

namespace Vism.Host.Config;

/// <summary>How attached regions may be shared (DESIGN.md "Attach sharing").</summary>
public enum Sharing
{
    /// <summary>A region is shared by its allocating device and one attacher (the v1 normative text).</summary>
    Pair,

    /// <summary>Any number of devices may attach a region.</summary>
    Multi,
}

/// <summary>The validated <c>[host]</c> section.</summary>
public sealed record HostSettings
{
    /// <summary>Default state directory.</summary>
    public const string DefaultStateDirectory = "/var/lib/vism";

    /// <summary>Default socket directory.</summary>
    public const string DefaultSocketDirectory = "/run/vism";

    /// <summary><c>gid</c>; null derives it from /etc/machine-id.</summary>
    public ulong? Gid { get; init; }

    /// <summary><c>sharing</c>.</summary>
    public Sharing Sharing { get; init; } = Sharing.Pair;

    /// <summary><c>state-dir</c>, absolute.</summary>
    public string StateDirectory { get; init; } = DefaultStateDirectory;

    /// <summary><c>socket-dir</c>, absolute.</summary>
    public string SocketDirectory { get; init; } = DefaultSocketDirectory;

    /// <summary><c>plugin-paths</c>, absolute, in addition to <c>plugins/</c> next to the program.</summary>
    public IReadOnlyList<string> PluginPaths { get; init; } = [];

    /// <summary><c>log-level</c>.</summary>
    public LogLevel LogLevel { get; init; } = LogLevel.Information;

    /// <summary><c>loops</c>: number of device loop threads. Default 1: devices on one loop route
    /// a notify to each other inline, in the turn that saw it, with no cross-thread wake-up (the
    /// event-path benchmark measured ~2 us against ~85 us for a round trip across two loops).</summary>
    public int Loops { get; init; } = 1;

    /// <summary><c>busy-poll</c>: how long a device loop keeps polling after its last event before it
    /// sleeps (<see cref="Vism.Native.EventLoop.BusyPoll"/>); zero sleeps at once.</summary>
    public TimeSpan BusyPoll { get; init; }
}

/// <summary>One plugin chosen for a device: its registration and its bound, validated options.</summary>
/// <param name="Registration">The installed kind.</param>
/// <param name="Options">The options object bound from the section.</param>
/// <param name="Path">The section's dotted path, e.g. <c>device[0].transport</c>.</param>
public sealed record PluginChoice(PluginRegistration Registration, object Options, string Path);

/// <summary>One validated <c>[[device]]</c>.</summary>
public sealed record DeviceSettings
{
    /// <summary><c>name</c>.</summary>
    public required string Name { get; init; }

    /// <summary>Its layout and identity, as plugins see it.</summary>
    public required DeviceDescription Description { get; init; }

    /// <summary><c>[device.transport]</c>.</summary>
    public required PluginChoice Transport { get; init; }

    /// <summary><c>[device.memory]</c>.</summary>
    public required PluginChoice Memory { get; init; }

    /// <summary><c>[device.events]</c>; null when the device offers no event feature.</summary>
    public PluginChoice? Events { get; init; }

    /// <summary>Every endpoint its plugins claimed (socket paths), for clean-up and logs.</summary>
    public IReadOnlyList<string> Endpoints { get; init; } = [];
}

/// <summary>A whole validated config file: nothing in it can fail validation any more.</summary>
/// <param name="File">The file as named by the user.</param>
/// <param name="Host">The host section.</param>
/// <param name="Devices">The devices in file order.</param>
public sealed record VismConfig(string File, HostSettings Host, IReadOnlyList<DeviceSettings> Devices);
