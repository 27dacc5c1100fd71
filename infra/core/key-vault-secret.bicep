// One secret in the vault, written from a secure parameter. Each write makes a new version;
// Key Vault references without a version follow it.

@description('Name of the vault.')
param vaultName string

@description('Name of the secret.')
param name string

@description('Value of the secret.')
@secure()
param value string

@description('What the secret holds (a MIME-like type).')
param contentType string

@description('Expiry of this version (Unix time in seconds).')
param expiry int

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: name
  properties: {
    value: value
    contentType: contentType
    attributes: {
      enabled: true
      exp: expiry
    }
  }
}

output name string = secret.name
