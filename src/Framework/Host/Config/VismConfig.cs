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

    /// <summary>The device's own keys as bound and checked (<c>name</c>, <c>region-size</c>, ...).</summary>
    public required DeviceSection Keys { get; init; }

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

    /// <summary><c>requests-per-turn</c>, <c>descriptors-per-turn</c>, <c>max-in-flight</c> (from <see cref="Keys"/>).</summary>
    public Vism.Core.DeviceLimits Limits => Keys.Limits;
}

/// <summary>A whole validated config file: nothing in it can fail validation any more.</summary>
/// <param name="File">The file as named by the user.</param>
/// <param name="Host">The host section.</param>
/// <param name="Devices">The devices in file order.</param>
public sealed record VismConfig(string File, HostSettings Host, IReadOnlyList<DeviceSettings> Devices)
{
    /// <summary>Where each <c>[host]</c> key is written, by dotted key (<c>host.socket-dir</c>), for errors found after validation.</summary>
    public IReadOnlyDictionary<string, TextPos> Positions { get; init; } = new Dictionary<string, TextPos>();

    /// <summary><c>file:line:column: key</c> when the key is written in the file, else <c>key (not set in file: the default)</c>.</summary>
    public string Where(string key) =>
        Positions.TryGetValue(key, out TextPos pos) ? $"{File}:{pos.Line}:{pos.Column}: {key}" : $"{File}: {key} (not set in the file: the default)";

    /// <summary>What validation warned about (the config is valid; <c>vism validate</c> and <c>vism run</c> print them).</summary>
    public IReadOnlyList<ConfigError> Warnings { get; init; } = [];
}
