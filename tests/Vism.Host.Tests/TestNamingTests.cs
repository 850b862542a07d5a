using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>
/// The naming rule for test code (tests/README.md): every method and local function declared under
/// tests/ is PascalCase, optionally split into Method_Condition_Result parts by underscores, each part
/// itself a PascalCase word. P/Invoke declarations keep their C names.
/// scripts/fix-test-names.py renames offenders with every reference to them.
/// </summary>
public sealed class TestNamingTests
{
    [Fact]
    public void EveryMethodDeclaredUnderTestsIsPascalCase()
    {
        string root = GuestImage.RepositoryRoot;
        var offenders = new List<string>();
        int methods = 0;
        foreach (string file in Directory.EnumerateFiles(Path.Combine(root, "tests"), "*.cs", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(root, file);
            if (relative.Split(Path.DirectorySeparatorChar).Any(d => d is "bin" or "obj"))
                continue;
            SyntaxNode tree = CSharpSyntaxTree.ParseText(File.ReadAllText(file), path: file).GetRoot();
            foreach (SyntaxNode node in tree.DescendantNodes())
            {
                (SyntaxToken name, SyntaxTokenList modifiers, SyntaxList<AttributeListSyntax> attributes) = node switch
                {
                    MethodDeclarationSyntax m => (m.Identifier, m.Modifiers, m.AttributeLists),
                    LocalFunctionStatementSyntax f => (f.Identifier, f.Modifiers, f.AttributeLists),
                    _ => default,
                };
                if (name == default || IsPInvoke(modifiers, attributes))
                    continue;
                methods++;
                if (!IsPascalCase(name.Text))
                    offenders.Add($"{relative}:{name.GetLocation().GetLineSpan().StartLinePosition.Line + 1}: {name.Text}");
            }
        }
        Assert.True(methods > 1000, $"only {methods} methods found under {root}/tests: is the checkout complete?");
        Assert.True(offenders.Count == 0,
            $"{offenders.Count} method name(s) under tests/ are not PascalCase (tests/README.md); " +
            $"scripts/fix-test-names.py renames them with their references:\n{string.Join('\n', offenders)}");
    }

    [Theory]
    [InlineData("DefaultsAreValidAndClaimTheSocketInTheSocketDirectory", true)]
    [InlineData("RingsOutsideTheSharedMemory_NameGuestRamWithoutShareOnAsTheLikelyCause", true)]
    [InlineData("AllocMustSetErrWhenSizeIsGreaterThanRegionSize", true)]
    [InlineData("A1GiBWindowOf1MiBRegions", true)]
    [InlineData("U64", true)]
    [InlineData("Defaults_are_valid_and_claim_the_socket_in_the_socket_directory", false)]
    [InlineData("Alloc_MUST_set_ERR_when_size_is_greater_than_region_size", false)]
    [InlineData("DENY_OTHER_LetsOnlyListedDevicesAttach", false)]
    [InlineData("Map_", false)]
    [InlineData("helper", false)]
    public void ThePascalCaseRuleTakesPascalCasePartsAndRefusesSnakeCase(string name, bool pascal) =>
        Assert.Equal(pascal, IsPascalCase(name));

    /// <summary>Each underscore-separated part starts with a capital and is not all capitals (unless
    /// the name is one part, such as <c>U64</c>).</summary>
    private static bool IsPascalCase(string name)
    {
        string[] parts = name.Split('_');
        return parts.All(p => p.Length > 0 && char.IsAsciiLetterUpper(p[0]) && p.All(char.IsAsciiLetterOrDigit)
            && (parts.Length == 1 || p.Length == 1 || p.Any(char.IsAsciiLetterLower)));
    }

    private static bool IsPInvoke(SyntaxTokenList modifiers, SyntaxList<AttributeListSyntax> attributes) =>
        modifiers.Any(SyntaxKind.ExternKeyword)
        || attributes.SelectMany(a => a.Attributes).Any(a => a.Name.ToString() is "LibraryImport" or "DllImport");
}
